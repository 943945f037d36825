"""One statement of an amavis config file, parsed and evaluated at once (no syntax tree: the
subset is small). `perl_config.read_text` cuts a file into statements and calls
:class:`Statement` for each; an :class:`~.perl_values.EvalError` becomes one reported line.
"""

from __future__ import annotations

from .perl_lexer import Token
from .perl_values import (
    CONSTANTS,
    Commands,
    Environment,
    EvalError,
    Interpolation,
    Opaque,
    Ref,
    Regex,
    Value,
    call_function,
    parse_number,
    single_quoted,
    to_number,
    to_string,
    truthy,
)

# Statements that would need Perl to run (or a loop we will not unroll).
_FORBIDDEN = {
    "do": "do FILE or do {...} runs Perl code",
    "require": "require loads Perl code",
    "eval": "eval runs Perl code",
    "sub": "a sub definition is code",
    "BEGIN": "a BEGIN block is code", "END": "an END block is code",
    "if": "conditions are not evaluated", "unless": "conditions are not evaluated",
    "while": "loops are not run", "until": "loops are not run", "for": "loops are not run",
    "foreach": "loops are not run", "package": "packages are not supported",
    "my": "lexical variables are not supported", "our": "declarations are not supported",
    "local": "local is not supported", "system": "commands are not run",
    "exec": "commands are not run", "open": "files are not opened",
}
_ASSIGN_OPS = {"=", ".=", "+=", "-=", "*=", "/=", "||=", "//=", "&&="}
_MAX_DEPTH = 40
_MAX_LIST = 10_000


class Statement:
    """Parse and evaluate one statement over its tokens (no AST: the subset is small)."""

    def __init__(self, env: Environment, tokens: list[Token], file: str,
                 commands: Commands) -> None:
        self.env, self.tokens, self.file, self.commands = env, tokens, file, commands
        self.pos = 0
        self.depth = 0

    # -- token helpers -----------------------------------------------------------------------

    def peek(self, offset: int = 0) -> Token | None:
        i = self.pos + offset
        return self.tokens[i] if i < len(self.tokens) else None

    def at(self, text: str, offset: int = 0) -> bool:
        tok = self.peek(offset)
        return tok is not None and tok.kind == "op" and tok.text == text

    def next(self) -> Token:
        tok = self.peek()
        if tok is None:
            raise EvalError("statement ends too early", self.tokens[-1].line)
        self.pos += 1
        if tok.kind == "bad":
            raise EvalError(f"{tok.text}", tok.line)
        return tok

    def expect(self, text: str) -> Token:
        tok = self.next()
        if tok.text != text or tok.kind != "op":
            raise EvalError(f"expected {text!r}, found {str(tok)!r}", tok.line)
        return tok

    @property
    def line(self) -> int:
        tok = self.peek() or self.tokens[-1]
        return tok.line

    # -- statements --------------------------------------------------------------------------

    def run(self) -> None:
        first = self.tokens[0]
        if first.kind == "ident":
            if first.text in ("use", "no"):
                return  # use strict; use warnings
            if first.text in _FORBIDDEN:
                raise EvalError(f"not read: {_FORBIDDEN[first.text]}", first.line)
            if first.text == "chomp":
                self.chomp()
                return
            if first.text in ("push", "unshift"):
                self.push(first.text)
                return
            if not self.at("=", 1) and not self.at("=>", 1):
                raise EvalError(f"not read: {first.text}(...) is a call, not an assignment",
                                first.line)
        if len(self.tokens) == 1 and first.kind in ("num", "str"):
            return  # 1;  (the "defined return" every file ends with)
        if first.kind == "var" and first.sigil in "$@%" and self.assignment_ahead():
            self.assign()
            self.finish()
            return
        raise EvalError("not read: only assignments to variables are", first.line)

    def finish(self) -> None:
        tok = self.peek()
        if tok is not None:
            raise EvalError(f"unexpected {str(tok)!r} after the assignment", tok.line)

    def assignment_ahead(self) -> bool:
        """Whether the tokens at pos are an lvalue ($x, @x, %x, $x{k}, $x[i]) and an '='."""
        tok = self.peek()
        if tok is None or tok.kind != "var" or tok.sigil not in "$@%":
            return False
        offset = 1
        if tok.sigil == "$" and (self.at("{", 1) or self.at("[", 1)):
            close = "}" if self.at("{", 1) else "]"
            offset = self.closing(1)
            if not self.at(close, offset):
                return False
            offset += 1
        nxt = self.peek(offset)
        return nxt is not None and nxt.kind == "op" and nxt.text in _ASSIGN_OPS

    def chomp(self) -> None:
        self.next()
        parens = self.at("(")
        if parens:
            self.next()
        if not self.assignment_ahead():
            tok = self.next()
            if tok.kind != "var":
                raise EvalError("chomp of something other than a variable", tok.line)
            name = tok.sigil + tok.text
            value = self.env.get(name)
        else:
            name, value = self.assign()
        if isinstance(value, str) and name.startswith("$"):
            binding = self.env.values[name]
            binding.value = value.rstrip("\n")
        if parens:
            self.expect(")")
        self.finish()

    def push(self, how: str) -> None:
        self.next()
        parens = self.at("(")
        if parens:
            self.next()
        tok = self.next()
        if tok.kind != "var" or tok.sigil != "@":
            raise EvalError(f"{how} onto something other than an array", tok.line)
        self.expect(",")
        items = self.list_until(")" if parens else None)
        if parens:
            self.expect(")")
        self.finish()
        name = "@" + tok.text
        old = self.env.get(name)
        old_items = list(old) if isinstance(old, list) else []
        self.env.set(name, items + old_items if how == "unshift" else old_items + items,
                     self.file, tok.line)

    def assign(self) -> tuple[str, Value]:
        """lvalue OP expression (right-associative, so `$ENV{PATH} = $path = '...'` works);
        returns the variable's name and its new value."""
        tok = self.next()
        name = tok.sigil + tok.text
        key: Value = None
        if tok.sigil == "$" and (self.at("{") or self.at("[")):
            brace = self.next().text == "{"
            key = self.subscript("}" if brace else "]")
            name = ("%" if brace else "@") + tok.text
        op = self.next().text
        if self.assignment_ahead():
            value = self.assign()[1]
        else:
            if self.is_backtick_idiom() and name in self.env.preset:
                self.pos += 1  # --set wins over the Debian idiom
                return name, self.env.get(name)
            value = self.expression()
        if op != "=":
            value = self.compound(op, self.element(name, key), value, tok.line)
        self.store(name, key, value, tok.line)
        return name, self.element(name, key)

    def is_backtick_idiom(self) -> bool:
        tok = self.peek()
        return tok is not None and tok.kind == "str" and tok.sigil == "`"

    def compound(self, op: str, old: Value, new: Value, line: int) -> Value:
        if isinstance(old, Opaque) or isinstance(new, Opaque):
            return old if isinstance(old, Opaque) else new
        if op == ".=":
            return to_string(old) + to_string(new)
        if op == "||=":
            return old if truthy(old) else new
        if op == "//=":
            return old if old is not None else new
        if op == "&&=":
            return new if truthy(old) else old
        return self.arithmetic(op[0], old, new, line)

    def element(self, name: str, key: Value) -> Value:
        value = self.env.get(name)
        if name.startswith("%") and key is not None:
            return value.get(to_string(key)) if isinstance(value, dict) else None
        if name.startswith("@") and key is not None:
            index = int(to_number(key, self.line))
            return value[index] if isinstance(value, list) and -len(value) <= index < len(
                value) else None
        return value

    def store(self, name: str, key: Value, value: Value, line: int) -> None:
        if name.startswith("$"):
            if isinstance(value, list):
                value = value[-1] if value else None  # the comma operator
            self.env.set(name, value, self.file, line)
        elif key is not None and name.startswith("%"):
            old = self.env.get(name)
            table = dict(old) if isinstance(old, dict) else {}
            table[to_string(key)] = value[-1] if isinstance(value, list) and value else value
            self.env.set(name, table, self.file, line)
        elif key is not None:
            old = self.env.get(name)
            items = list(old) if isinstance(old, list) else []
            index = int(to_number(key, line))
            if not 0 <= index < _MAX_LIST:
                raise EvalError(f"array index {index} out of range", line)
            items += [None] * (index + 1 - len(items))
            items[index] = value
            self.env.set(name, items, self.file, line)
        elif name.startswith("@"):
            self.env.set(name, list(value) if isinstance(value, list) else [value],
                         self.file, line)
        else:
            items = value if isinstance(value, list) else [value]
            if isinstance(value, Opaque):
                self.env.set(name, value, self.file, line)
                return
            if len(items) % 2:
                raise EvalError(f"odd number of elements assigned to {name}", line)
            self.env.set(name, {to_string(k): v for k, v in zip(items[::2], items[1::2],
                                                               strict=True)},
                         self.file, line)

    def subscript(self, close: str) -> Value:
        tok = self.peek()
        if close == "}" and tok is not None and tok.kind == "ident" and self.at("}", 1):
            self.next()
            self.next()
            return tok.text
        value = self.expression()
        self.expect(close)
        return value

    # -- expressions -------------------------------------------------------------------------

    def expression(self) -> Value:
        self.depth += 1
        if self.depth > _MAX_DEPTH:
            raise EvalError("nested too deeply", self.line)
        try:
            return self.ternary()
        finally:
            self.depth -= 1

    def ternary(self) -> Value:
        condition = self.logical()
        if not self.at("?"):
            return condition
        self.next()
        yes = self.expression()
        self.expect(":")
        no = self.expression()
        if isinstance(condition, Opaque):
            return condition
        return yes if truthy(condition) else no

    def logical(self) -> Value:
        left = self.binary(0)
        while self.at("||") or self.at("//") or self.at("&&"):
            op = self.next().text
            right = self.binary(0)
            if isinstance(left, Opaque):
                continue
            if op == "||":
                left = left if truthy(left) else right
            elif op == "//":
                left = left if left is not None else right
            else:
                left = right if truthy(left) else left
        return left

    _LEVELS = (("+", "-", "."), ("*", "/", "%", "x"))

    def binary(self, level: int) -> Value:
        if level == len(self._LEVELS):
            return self.unary()
        left = self.binary(level + 1)
        while True:
            tok = self.peek()
            if tok is None or tok.text not in self._LEVELS[level] or \
                    tok.kind not in ("op", "ident"):
                return left
            self.next()
            right = self.binary(level + 1)
            left = self.arithmetic(tok.text, left, right, tok.line)

    def arithmetic(self, op: str, left: Value, right: Value, line: int) -> Value:
        for side in (left, right):
            if isinstance(side, Opaque):
                return side
        if op == ".":
            return to_string(left) + to_string(right)
        if op == "x":
            count = int(to_number(right, line))
            if len(to_string(left)) * max(count, 0) > 1_000_000:
                raise EvalError("string repetition too long", line)
            return to_string(left) * max(count, 0)
        a, b = to_number(left, line), to_number(right, line)
        if op in "/%" and b == 0:
            raise EvalError("division by zero", line)
        if op == "+":
            result = a + b
        elif op == "-":
            result = a - b
        elif op == "*":
            result = a * b
        elif op == "/":
            result = a / b
        else:
            result = a % b
        if isinstance(result, int) and abs(result) > 2**63:
            raise EvalError("number too large", line)
        return result

    def unary(self) -> Value:
        prefixes = []  # applied innermost first; a loop, so "- - - ... 1" cannot recurse
        while self.at("-") or self.at("!") or self.at("+"):
            prefixes.append(self.next().text)
        if self.at("\\"):
            self.next()
            value = self.reference()
        else:
            value = self.primary()
        for op in reversed(prefixes):
            if isinstance(value, Opaque):
                return value
            if op == "!":
                value = "" if truthy(value) else 1
            elif op == "-":
                value = -to_number(value, self.line)
            else:
                value = to_number(value, self.line)
        return value

    def reference(self) -> Value:
        tok = self.next()
        if tok.kind == "var" and tok.sigil in "$@%":
            return Ref(tok.sigil + tok.text)
        if tok.kind == "var" and tok.sigil == "&":
            return Opaque(f"a reference to the code &{tok.text}")
        raise EvalError(f"reference to {str(tok)!r} is not supported", tok.line)

    def primary(self) -> Value:
        tok = self.next()
        if tok.kind == "num":
            return parse_number(tok)
        if tok.kind == "str":
            return self.string(tok)
        if tok.kind == "var":
            return self.variable(tok)
        if tok.kind == "ident":
            return self.bareword(tok)
        if tok.text == "(":
            items = self.list_until(")")
            self.expect(")")
            return items
        if tok.text == "[":
            items = self.list_until("]")
            self.expect("]")
            return tuple(items)
        if tok.text == "{":
            items = self.list_until("}")
            self.expect("}")
            if len(items) % 2:
                raise EvalError("odd number of elements in a hash reference", tok.line)
            return {to_string(k): v for k, v in zip(items[::2], items[1::2], strict=True)}
        raise EvalError(f"unexpected {str(tok)!r}", tok.line)

    def list_until(self, close: str | None) -> list[Value]:
        """Comma-separated elements up to `close` (not consumed), lists flattened."""
        items: list[Value] = []
        while True:
            if self.peek() is None or (close is not None and self.at(close)):
                return items
            value = self.expression()
            if self.at(".."):
                self.next()
                value = self.range(value, self.expression())
            if isinstance(value, list):
                items.extend(value)
            else:
                items.append(value)
            if len(items) > _MAX_LIST:
                raise EvalError(f"list longer than {_MAX_LIST} elements", self.line)
            if self.at(",") or self.at("=>"):
                self.next()
            elif self.peek() is not None and not (close is not None and self.at(close)):
                tok = self.peek()
                raise EvalError(f"expected ',' or {close!r}, found {str(tok)!r}", self.line)

    def range(self, low: Value, high: Value) -> list[Value]:
        a, b = int(to_number(low, self.line)), int(to_number(high, self.line))
        if b - a > _MAX_LIST:
            raise EvalError(f"range longer than {_MAX_LIST} elements", self.line)
        return list(range(a, b + 1))

    def variable(self, tok: Token) -> Value:
        name = tok.sigil + tok.text
        if tok.sigil == "&":
            raise EvalError(f"calling &{tok.text} is code", tok.line)
        if tok.sigil == "$" and (self.at("{") or self.at("[")):
            brace = self.next().text == "{"
            key = self.subscript("}" if brace else "]")
            return self.element(("%" if brace else "@") + tok.text, key)
        if self.at("->"):
            raise EvalError("dereferencing with -> is not supported", tok.line)
        value = self.env.get(name)
        if tok.sigil == "@":
            return list(value) if isinstance(value, list) else []
        if tok.sigil == "%":
            table = value if isinstance(value, dict) else {}
            return [x for pair in table.items() for x in pair]
        return value

    def bareword(self, tok: Token) -> Value:
        word = tok.text
        if self.at("=>"):
            return word
        if word in CONSTANTS:
            if self.at("("):
                self.next()
                self.expect(")")
            return CONSTANTS[word]
        if word == "undef":
            return None
        if word == "sub" and self.at("{"):
            self.skip_balanced()
            return Opaque("code (sub {...})")
        if not self.at("("):
            raise EvalError(f"bareword {word!r} (a call without parentheses?)", tok.line)
        self.next()
        args = self.list_until(")")
        self.expect(")")
        return call_function(word, args, tok.line)

    def closing(self, offset: int) -> int:
        """The offset of the bracket that closes the one at `offset` (nested ones counted),
        or the offset past the last token if it is never closed."""
        depth = 0
        while (tok := self.peek(offset)) is not None:
            if tok.kind == "op" and tok.text in "{[(":
                depth += 1
            elif tok.kind == "op" and tok.text in "}])":
                depth -= 1
                if depth == 0:
                    return offset
            offset += 1
        return offset

    def skip_balanced(self) -> None:
        end = self.closing(0)
        self.pos += end + 1 if self.peek(end) is not None else end

    def string(self, tok: Token) -> Value:
        if tok.sigil in ("'", "q"):
            return single_quoted(tok.text)
        if tok.sigil == "qw":
            return list(tok.text.split())
        if tok.sigil in ("qr", "m"):
            return Regex(tok.text, tok.flags)
        if tok.sigil == "`":
            return self.backticks(tok)
        return Interpolation(self.env, tok).run()

    def backticks(self, tok: Token) -> Value:
        command = " ".join(tok.text.split())
        if command in ("head -n 1 /etc/mailname", "head -1 /etc/mailname",
                       "cat /etc/mailname"):
            return self.commands.mailname()
        if command in ("hostname --fqdn", "hostname -f"):
            return self.commands.fqdn()
        return Opaque(f"the command `{command}` is not run; give the value with "
                      "--set NAME=VALUE")
