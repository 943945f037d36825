"""Read amavis config files without running them: the subset of Perl they are written in.

amavisd-new's config is Perl, evaluated with `do FILE`. lmtpfilter never runs it: it reads
assignments (`$x = EXPR;`, `@x = (LIST);`, `%x = (...)`, `$x{key} = ...`, `push`), the two
Debian idioms `chomp($mydomain = \\`head -n 1 /etc/mailname\\`)` and
`chomp($myhostname = \\`hostname --fqdn\\`)`, and expressions of literals, variables,
references, `new_RE(...)` and `read_hash(FILE)`, in order, the way Perl would assign them.

Valid Perl that has no value here (a code reference, `sub {...}`, a call of an unknown
function, a command in backticks) evaluates to :class:`Opaque`; whoever needs the value says
why it could not be used. Syntax outside the subset (a here-document, `do FILE`, `require`,
`eval`, `if`, unbalanced brackets, an unterminated string) is a :class:`Problem`: one line
naming the construct, the file and the line; reading goes on after the next `;`.
"""

from __future__ import annotations

from .perl_eval import Statement
from .perl_lexer import PerlSyntaxError, Token, tokenize
from .perl_values import Commands, Environment, EvalError, Problem

_MAX_RESTARTS = 5
_BLOCK_STATEMENTS = {"sub", "if", "unless", "while", "until", "for", "foreach", "BEGIN",
                     "END", "package"}


def read_text(env: Environment, text: str, file: str, commands: Commands) -> list[Problem]:
    """Evaluate the statements of one file into `env`; the problems, in order."""
    problems: list[Problem] = []
    try:
        tokens = tokenize(text)
    except PerlSyntaxError as exc:
        # The statements before the line where reading stopped still count.
        before = read_text(env, text[:_offset_of_line(text, exc.line)], file, commands) \
            if exc.line > 1 else []
        return [*before, Problem("syntax", file, exc.line, f"{exc.why}; rest of file skipped")]
    for statement, problem in _statements(tokens):
        if problem is not None:
            problems.append(Problem(problem[0], file, problem[1], problem[2]))
            continue
        try:
            Statement(env, statement, file, commands).run()
        except EvalError as exc:
            problems.append(Problem(_name_of(statement), file, exc.line, exc.why))
    return problems


def _offset_of_line(text: str, line: int) -> int:
    offset = 0
    for _ in range(line - 1):
        offset = text.find("\n", offset) + 1
        if offset == 0:
            return len(text)
    return offset


def _name_of(statement: list[Token]) -> str:
    first = statement[0]
    if first.kind == "ident" and first.text == "chomp" and len(statement) > 2:
        first = statement[2] if statement[1].text == "(" else statement[1]
    if first.kind == "var" and first.sigil == "$" and len(statement) > 1 and \
            statement[1].text in ("{", "["):
        return ("%" if statement[1].text == "{" else "@") + first.text
    if first.kind == "str":
        return f"{first.sigil}{first.text[:30]}{first.sigil}"
    return str(first)[:40]


Statements = list[tuple[list[Token], tuple[str, int, str] | None]]


def _statements(tokens: list[Token]) -> Statements:
    """Cut the tokens at each `;` outside brackets (and after the block of an `if` or a
    `sub`). A bracket that does not match is a problem, skipped up to the next `;`; one never
    closed is a problem, and reading goes on after the first `;` that follows it."""
    out: Statements = []
    start, restarts = 0, 0
    while start < len(tokens):
        if restarts == _MAX_RESTARTS:  # each restart scans the rest: keep it linear
            out.append(([], ("syntax", tokens[start].line,
                             "too many brackets never closed; rest of file skipped")))
            break
        start = _cut(tokens, start, out)
        restarts += 1
    return out


def _cut(tokens: list[Token], start: int, out: Statements) -> int:
    """Statements from tokens[start:] into `out`; where to go on (after a bracket that is
    never closed), or len(tokens)."""
    current: list[Token] = []
    stack: list[tuple[Token, int]] = []
    broken: tuple[str, int, str] | None = None
    closers = {")": "(", "]": "[", "}": "{"}
    for index in range(start, len(tokens)):
        tok = tokens[index]
        if tok.kind == "op" and tok.text in ("(", "[", "{") and broken is None:
            stack.append((tok, index))
        elif tok.kind == "op" and tok.text in closers and broken is None:
            if not stack or stack[-1][0].text != closers[tok.text]:
                opened = (f" (the open one is {stack[-1][0].text!r} from line "
                          f"{stack[-1][0].line})") if stack else ""
                broken = (_name_of(current) if current else tok.text, tok.line,
                          f"unbalanced {tok.text!r}{opened}; skipped to the next ';'")
                stack.clear()
            else:
                stack.pop()
        if tok.kind == "op" and tok.text == ";" and not stack:
            if current or broken:
                out.append((current, broken))
            current, broken = [], None
            continue
        current.append(tok)
        block_ends = (tok.text == "}" and not stack and current[0].kind == "ident"
                      and current[0].text in _BLOCK_STATEMENTS)
        if block_ends and broken is None:
            out.append((current, None))
            current = []
    if stack:
        opener, at = stack[0]
        out.append((current, (_name_of(current), opener.line,
                              f"{opener.text!r} is never closed; skipped to the next ';'")))
        after = next((i for i in range(at, len(tokens)) if tokens[i].text == ";"
                      and tokens[i].kind == "op"), len(tokens))
        return after + 1
    if current or broken:
        out.append((current, broken))
    return len(tokens)
