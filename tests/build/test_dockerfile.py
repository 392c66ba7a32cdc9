"""Dockerfile syntax and word expansion, held to the examples of Docker's Dockerfile reference."""

from __future__ import annotations

import pytest

from store.build.dockerfile import DockerfileError, parse
from store.build.words import expand, split
from store.errors import InvalidInput


def cmds(text: str) -> list[tuple[str, str]]:
    return [(x.cmd, x.args) for x in parse(text).instructions]


def test_continuations_comments_and_case() -> None:
    text = 'from debian\nRUN echo hello \\\n# comment\n\n  world\n# a comment\nrun  ["echo", "x"]\n'
    df = parse(text)
    assert [(x.cmd, x.args, x.line) for x in df.instructions] == [
        ("FROM", "debian", 1),
        ("RUN", "echo hello world", 2),  # (the reference: comments inside a continuation are dropped)
        ("RUN", '["echo", "x"]', 7),
    ]
    assert df.instructions[2].exec_form == ["echo", "x"] and df.instructions[1].exec_form is None


def test_escape_directive_backtick() -> None:
    """The reference's Windows example: with `# escape=``, a trailing backslash is a path."""
    text = "# escape=`\n\nFROM mcr.microsoft.com/windows/servercore\nCOPY testfile.txt c:\\\nRUN dir c:\\\n"
    df = parse(text)
    assert df.escape == "`"
    assert [(x.cmd, x.args) for x in df.instructions][1:] == [("COPY", "testfile.txt c:\\"), ("RUN", "dir c:\\")]
    with_backslash = parse("FROM x\nCOPY testfile.txt c:\\\nRUN dir c:\\\n")
    assert len(with_backslash.instructions) == 2  # (the default escape joins the lines)


def test_directives_only_at_the_top() -> None:
    df = parse("# syntax=docker/dockerfile:1\n# escape=\\\nFROM a\n# escape=`\nRUN x `\n")
    assert df.directives == {"syntax": "docker/dockerfile:1", "escape": "\\"}
    assert parse("FROM a\n# escape=`\nRUN x\n").escape == "\\"


def test_flags_and_forms() -> None:
    i = parse("FROM a AS build\nCOPY --from=build --chown=1:2 --link /src /dst\nRUN [ -f x ] && echo y\n").instructions
    assert i[1].flags == {"from": "build", "chown": "1:2", "link": None} and i[1].args == "/src /dst"
    assert i[2].exec_form is None and i[2].args == "[ -f x ] && echo y"  # shell form, as Docker runs it


def test_heredocs() -> None:
    text = (
        "FROM a\nRUN <<EOT bash\n  set -ex\n  apt-get update\nEOT\n"
        "COPY <<-'EOF' /app/f\n\thello $X\n\tEOF\n"
        "RUN <<A cat > a && <<B cat > b\n1\nA\n2\nB\n"
    )
    i = parse(text).instructions
    assert [x.cmd for x in i] == ["FROM", "RUN", "COPY", "RUN"]
    assert (i[1].heredocs[0].name, i[1].heredocs[0].content, i[1].heredocs[0].expand) == (
        "EOT",
        "  set -ex\n  apt-get update\n",
        True,
    )
    assert (i[2].heredocs[0].content, i[2].heredocs[0].expand) == ("hello $X\n", False)
    assert [(d.name, d.content) for d in i[3].heredocs] == [("A", "1\n"), ("B", "2\n")]


@pytest.mark.parametrize(
    ("text", "line", "needle"),
    [
        ("FROM a\nFOO bar\n", 2, "unknown instruction: FOO"),
        ("# just a comment\nRUN x\n", 2, "no FROM"),
        ("ENV a=b\nFROM x\n", 1, "before the first FROM"),
        ("FROM a\nRUN <<EOF\nnever ends\n", 2, "unterminated heredoc"),
        ('FROM a\nCMD ["a", "b"\n', 2, "unterminated JSON array"),
        ("# escape=x\nFROM a\n", 1, "invalid escape"),
        ("FROM a\nCOPY --chown= x y\n", 2, None),
    ],
)
def test_bad_syntax_names_the_line(text: str, line: int, needle: str | None) -> None:
    if needle is None:  # (an empty flag value is allowed, as BuildKit's parser allows it)
        parse(text)
        return
    with pytest.raises(DockerfileError) as e:
        parse(text, "ctx/Dockerfile")
    assert str(e.value).startswith(f"ctx/Dockerfile:{line}: ") and needle in str(e.value)


def test_variable_substitution_as_the_reference_shows() -> None:
    env = {"FOO": "/bar", "EMPTY": "", "X": "e f"}
    assert expand("${FOO}", env) == "/bar" and expand("$FOO", env) == "/bar"
    assert split(". $FOO", env) == [".", "/bar"]
    assert split("\\$FOO /quux", env) == ["$FOO", "/quux"]  # (escaped: literal)
    assert expand("${NOPE:-word}", env) == "word" and expand("${EMPTY:-word}", env) == "word"
    assert expand("${EMPTY-word}", env) == "" and expand("${NOPE-word}", env) == "word"
    assert expand("${FOO:+word}", env) == "word" and expand("${NOPE:+word}", env) == ""
    assert expand("${EMPTY+word}", env) == "word" and expand("${EMPTY:+word}", env) == ""
    assert split("a 'b $FOO' \"d $X\" e\\ f", env) == ["a", "b $FOO", "d e f", "e f"]
    assert expand("${NOPE:-${FOO}/x}", env) == "/bar/x"
    with pytest.raises(InvalidInput, match="NOPE: must be set"):
        expand("${NOPE:?must be set}", env)
    with pytest.raises(InvalidInput, match="double-quote"):
        split('"open', env)


def test_dockerignore_rules_of_the_reference() -> None:
    """The examples of Docker's .dockerignore documentation."""
    from store.build.ignore import Ignore

    ig = Ignore(["# comment", "*/temp*", "*/*/temp*", "temp?", "*.md", "!README*.md", "README-secret.md"])
    assert ig("somedir/temporary.txt") and ig("somedir/temp") and ig("a/b/temp.txt") and ig("temp1")
    assert not ig("temp12") and not ig("a/b/c/temp")
    assert ig("x.md") and not ig("README.md") and ig("README-secret.md")  # (the last match wins)
    go = Ignore(["**/*.go", "dir", "!dir/keep"])
    assert go("main.go") and go("a/b/main.go") and go("dir/other") and not go("dir/keep")
