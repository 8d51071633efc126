"""The distribution reference grammar and the path rules of SPEC §1, without an engine.

The strategies below build references from the grammar of
github.com/distribution/reference (regexp.go), piece by piece, so the
properties are checked against what the grammar says rather than against the
module's own regular expressions.
"""

from __future__ import annotations

import re
import string

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from imagefs import references
from imagefs.references import (
    NAME_TOTAL_LENGTH_MAX,
    Reference,
    is_image_id,
    is_image_path,
    is_namespace_path,
    parse,
    parse_tag_target,
    short_id,
    to_path,
)

FAST = settings(max_examples=100, deadline=None)

HEX = "0123456789abcdef"
LOWER_ALNUM = string.ascii_lowercase + string.digits
DOMAIN_CHARS = string.ascii_letters + string.digits
TAG_FIRST = string.ascii_letters + string.digits + "_"  # Go's \w is ASCII
TAG_REST = TAG_FIRST + ".-"

# --- strategies: the grammar ------------------------------------------------------------

alnum = st.text(LOWER_ALNUM, min_size=1, max_size=6)
separator = st.one_of(st.sampled_from([".", "_", "__"]), st.integers(1, 3).map(lambda n: "-" * n))


@st.composite
def path_components(draw: st.DrawFn) -> str:
    """alphanumeric (separator alphanumeric)*"""
    parts = [draw(alnum)]
    for _ in range(draw(st.integers(0, 2))):
        parts += [draw(separator), draw(alnum)]
    return "".join(parts)


@st.composite
def domain_components(draw: st.DrawFn) -> str:
    """[a-zA-Z0-9] | [a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9]"""
    first = draw(st.sampled_from(DOMAIN_CHARS))
    if draw(st.booleans()):
        return first
    middle = draw(st.text(DOMAIN_CHARS + "-", max_size=6))
    return first + middle + draw(st.sampled_from(DOMAIN_CHARS))


@st.composite
def domains(draw: st.DrawFn) -> str:
    if draw(st.integers(0, 9)) == 0:
        host = "[" + draw(st.text(HEX + HEX.upper() + ":", min_size=1, max_size=10)) + "]"
    else:
        host = ".".join(draw(st.lists(domain_components(), min_size=1, max_size=3)))
    port = draw(st.one_of(st.just(""), st.integers(0, 65535).map(lambda p: f":{p}")))
    return host + port


@st.composite
def names(draw: st.DrawFn) -> str:
    domain = draw(st.one_of(st.none(), domains()))
    components = draw(st.lists(path_components(), min_size=1, max_size=4))
    name = "/".join(([domain] if domain else []) + components)
    assume(len(name) <= NAME_TOTAL_LENGTH_MAX)
    return name


tags = st.builds(
    lambda first, rest: first + rest,
    st.sampled_from(TAG_FIRST),
    st.text(TAG_REST, max_size=127),
)
digests = st.text(HEX + HEX.upper(), min_size=64, max_size=64).map(lambda h: "sha256:" + h)


@st.composite
def references_(draw: st.DrawFn, kind: str | None = None) -> tuple[str, Reference]:
    """(text, the Reference it must parse to); kind: 'tag', 'digest', 'both', or any of them."""
    kind = kind or draw(st.sampled_from(["tag", "digest", "both"]))
    name = draw(names())
    tag = draw(tags) if kind in ("tag", "both") else None
    digest = draw(digests) if kind in ("digest", "both") else None
    text = name + (f":{tag}" if tag else "") + (f"@{digest}" if digest else "")
    return text, Reference(name, tag, digest)


# --- the grammar accepts what it generates -------------------------------------------------


@FAST
@given(references_())
def test_parse_accepts_and_round_trips(generated: tuple[str, Reference]) -> None:
    text, expected = generated
    ref = parse(text)
    assert ref == expected
    assert str(ref) == text


@FAST
@given(names())
def test_bare_name_parses_but_has_no_place(name: str) -> None:
    assert parse(name) == Reference(name)
    assert to_path(name) is None  # an image directory needs a tag or a digest


@FAST
@given(references_())
def test_path_joined_is_the_reference(generated: tuple[str, Reference]) -> None:
    text, _ = generated
    path = to_path(text)
    assert path is not None
    assert "/".join(path) == text
    assert all(path)  # no empty component
    assert is_image_path(path)


@FAST
@given(references_("tag"))
def test_every_proper_prefix_of_a_tagged_path_is_a_namespace(generated: tuple[str, Reference]) -> None:
    path = to_path(generated[0])
    assert path is not None
    for depth in range(len(path)):
        assert is_namespace_path(path[:depth]), path[:depth]


@FAST
@given(references_())
def test_colon_and_at_in_paths(generated: tuple[str, Reference]) -> None:
    """Namespace components hold ":" only as the first component's port, never "@"; the image one holds either."""
    text, ref = generated
    path = to_path(text)
    assert path is not None
    for i, component in enumerate(path[:-1]):
        assert "@" not in component
        if ":" in component:
            assert i == 0, path
            host_port = re.sub(r"^\[[0-9A-Fa-f:]+\]", "", component)  # an IPv6 host holds colons
            if ":" in host_port:
                assert host_port.rsplit(":", 1)[1].isdigit(), component  # a registry port
    assert ":" in path[-1] or "@" in path[-1]
    assert ("@" in path[-1]) == (ref.digest is not None)


def test_name_length_limit() -> None:
    name = "a/" * 126 + "abc"  # 255 characters
    assert len(name) == NAME_TOTAL_LENGTH_MAX
    assert parse(name + ":1") == Reference(name, "1")
    assert parse(name + "x:1") is None
    assert to_path(name + "x:1") is None


def test_tag_length_limit() -> None:
    assert parse("a:" + "x" * 128) == Reference("a", "x" * 128)
    assert parse("a:" + "x" * 129) is None


def test_digest_needs_32_hex_at_least() -> None:
    assert parse("a@sha256:" + "0" * 32) == Reference("a", None, "sha256:" + "0" * 32)
    assert parse("a@sha256:" + "0" * 31) is None
    assert parse("a@sha256:" + "g" * 64) is None


# --- the tree layout of concrete references -------------------------------------------------


@pytest.mark.parametrize(
    ("ref", "path"),
    [
        ("alpine:latest", ("alpine:latest",)),
        ("myorg/app:1.0", ("myorg", "app:1.0")),
        ("localhost:5000/team/app:2", ("localhost:5000", "team", "app:2")),
        ("docker.io/library/x:1", ("docker.io", "library", "x:1")),
        ("localhost/x:1", ("localhost", "x:1")),
        ("[::1]:5000/x:1", ("[::1]:5000", "x:1")),
        ("alpine@sha256:" + "a" * 64, ("alpine@sha256:" + "a" * 64,)),
        ("a/b:c@sha256:" + "a" * 64, ("a", "b:c@sha256:" + "a" * 64)),
    ],
)
def test_to_path_examples(ref: str, path: tuple[str, ...]) -> None:
    assert to_path(ref) == path
    assert is_image_path(path)
    assert all(is_namespace_path(path[:d]) for d in range(len(path)))


def test_localhost_5000_is_both_an_image_and_a_namespace() -> None:
    assert parse("localhost:5000") == Reference("localhost", "5000")
    assert to_path("localhost:5000") == ("localhost:5000",)
    assert is_image_path(("localhost:5000",))
    assert is_namespace_path(("localhost:5000",))
    assert is_image_path(("localhost:5000", "team", "app:2"))
    assert is_namespace_path(("localhost:5000", "team"))
    # Deeper down, a colon is always a tag: never a namespace.
    assert not is_namespace_path(("localhost:5000", "team:2"))
    assert is_image_path(("localhost:5000", "team:2"))


def test_root_is_a_namespace_not_an_image() -> None:
    assert is_namespace_path(())
    assert not is_image_path(())


def test_domain_only_namespace() -> None:
    # An uppercase or dotted first component can be a registry host.
    assert is_namespace_path(("Example.COM",))
    assert is_namespace_path(("registry.example.com:443",))
    assert not is_image_path(("Example.COM",))
    assert not is_image_path(("Example.COM:1",))  # as a repository it would have to be lowercase


# --- what cannot be a reference -------------------------------------------------------------

NOT_REFERENCES = [
    "",
    ".",
    "..",
    ".imagefs",
    ".hidden:1",
    "Bad Name!",
    "<none>:<none>",
    "<none>@<none>",
    "my app:1",
    "app:1 ",
    " app:1",
    "a\0b:1",
    "a\0b",
    "app:",
    "app@",
    ":1",
    "@sha256:" + "a" * 64,
    "-app:1",
    "app-:1",
    "a..b:1",
    "a___b:1",
    "app:-1",
    "app:.1",
    "app@sha256:" + "a" * 63 + "@x",
    "app:1:2",
    "app@sha256",
    "app:1\n",
]


@pytest.mark.parametrize("name", NOT_REFERENCES)
def test_not_a_reference(name: str) -> None:
    assert parse(name) is None
    assert to_path(name) is None
    assert not is_image_path((name,))
    assert not is_image_path(("myorg", name))


@pytest.mark.parametrize(
    "name",
    ["", ".", "..", ".imagefs", "Bad Name!", "<none>:<none>", "<none>", "my app", "a\0b", "a@b", "-a", "a-", "a:b"],
)
def test_not_a_namespace(name: str) -> None:
    assert not is_namespace_path((name,))
    assert not is_namespace_path(("myorg", name))
    assert not is_namespace_path((name, "x"))


@pytest.mark.parametrize("component", ["Alpine", "ALPINE", "alPine"])
def test_uppercase_after_the_first_component(component: str) -> None:
    assert not is_image_path(("library", component + ":1"))
    assert not is_image_path(("docker.io", "library", component + "@sha256:" + "a" * 64))
    assert not is_namespace_path(("library", component))
    assert not is_namespace_path(("localhost:5000", component, "x"))
    assert parse(f"library/{component}:1") is None


@FAST
@given(references_(), st.data())
def test_uppercasing_a_later_component_breaks_the_reference(
    generated: tuple[str, Reference], data: st.DataObject
) -> None:
    path = to_path(generated[0])
    assert path is not None
    assume(len(path) >= 2)
    i = data.draw(st.integers(1, len(path) - 1))
    component = path[i]
    if i == len(path) - 1:  # only the repository part: tags may be uppercase
        cut = min((component.index(c) for c in ":@" if c in component), default=len(component))
        upper = component[:cut].upper() + component[cut:]
    else:
        upper = component.upper()
    assume(upper != component)
    broken = (*path[:i], upper, *path[i + 1 :])
    assert not is_image_path(broken)
    assert not is_namespace_path(broken[: i + 1])
    assert parse("/".join(broken)) is None


@FAST
@given(st.lists(st.text(max_size=8), min_size=1, max_size=4), st.data())
def test_dot_names_never_collide_with_references(path: list[str], data: st.DataObject) -> None:
    i = data.draw(st.integers(0, len(path) - 1))
    path[i] = "." + path[i]
    assert not is_image_path(tuple(path))
    assert not is_namespace_path(tuple(path))


@FAST
@given(references_(), st.data(), st.sampled_from([" ", "\0", "\t", "\n", "!", "<", "\\"]))
def test_a_bad_character_anywhere_breaks_the_reference(
    generated: tuple[str, Reference], data: st.DataObject, bad: str
) -> None:
    text, _ = generated
    where = data.draw(st.integers(0, len(text)))
    broken = text[:where] + bad + text[where:]
    assert parse(broken) is None
    assert not is_image_path(tuple(broken.split("/")))


@FAST
@given(st.lists(st.text("ab1A:@._-/ []", max_size=6), max_size=4))
def test_image_paths_have_a_tag_or_digest_and_no_dots(path: list[str]) -> None:
    if is_image_path(tuple(path)):
        assert ":" in path[-1] or "@" in path[-1]
        assert not any(c.startswith(".") or c == "" for c in path)
        assert parse("/".join(path)) is not None
    if is_namespace_path(tuple(path)):
        assert not any("@" in c or c.startswith(".") or c == "" for c in path)
        assert not any(":" in c for c in path[1:])


@pytest.mark.parametrize("tag", ["é", "ñ1", "١٢", "tag\u00b2", "日本"])
def test_non_ascii_tags_are_not_references(tag: str) -> None:
    assert parse(f"alpine:{tag}") is None
    assert not is_image_path((f"alpine:{tag}",))


# --- parse_tag_target ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("myrepo/x:v2", ("myrepo/x", "v2")),
        ("myrepo/x", ("myrepo/x", "latest")),
        ("alpine", ("alpine", "latest")),
        ("localhost:5000", ("localhost", "5000")),
        ("localhost:5000/app", ("localhost:5000/app", "latest")),
        ("localhost:5000/app:2", ("localhost:5000/app", "2")),
        ("docker.io/library/x:1", ("docker.io/library/x", "1")),
    ],
)
def test_parse_tag_target(text: str, expected: tuple[str, str]) -> None:
    assert parse_tag_target(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "",
        "Bad Name!",
        "Alpine",
        "x:",
        "<none>:<none>",
        "x@sha256:" + "a" * 64,
        "x:1@sha256:" + "a" * 64,
        ".hidden",
        "a b",
    ],
)
def test_parse_tag_target_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="invalid reference format"):
        parse_tag_target(text)


# What dockerd 20.10 makes of a new repository name (ParseNormalizedNamed, docker/distribution v2.7
# normalize.go): the first component is a registry only with "." or ":" in it or as "localhost"; Docker Hub
# names get "docker.io/" and, with one component, "library/"; the result is at most 255 characters.
# Each kind below is built so that its verdict is known from how it was built.
HUB = "docker.io/"
LIBRARY = "library/"


@st.composite
def tag_targets(draw: st.DrawFn) -> tuple[str, str | None]:
    """(a repository name the grammar accepts, None if the engine takes it, else a word of its refusal)."""
    kind = draw(st.sampled_from(["hub", "registry", "localhost", "docker.io", "index.docker.io", "upper", "ipv6"]))
    path = draw(st.lists(path_components(), min_size=1, max_size=3))
    if draw(st.booleans()):  # long names, to cross the length limit from either side
        path.append("p" * draw(st.integers(200, 260)))
    rest = "/".join(path)
    hub = HUB + (LIBRARY if len(path) == 1 else "") + rest
    if kind == "hub":
        registry_like = len(path) > 1 and ("." in path[0] or path[0] == "localhost")
        return rest, _length_verdict(rest if registry_like else hub)
    if kind in ("docker.io", "index.docker.io"):
        return f"{kind}/{rest}", _length_verdict(hub)
    if kind == "upper":
        host = draw(domain_components().filter(lambda c: c != c.lower()))
        return f"{host}/{rest}", "lowercase"
    if kind == "ipv6":  # without a port or a ":" inside, the brackets are no registry but a bad path
        host = draw(domains().filter(lambda d: d.startswith("[")))
        return f"{host}/{rest}", "IPv6" if ":" in host or host == host.lower() else "lowercase"
    host = "localhost" if kind == "localhost" else draw(registry_hosts())
    return f"{host}/{rest}", _length_verdict(f"{host}/{rest}")


@st.composite
def registry_hosts(draw: st.DrawFn) -> str:
    """A first component the engine takes as a registry: with a "." or a port."""
    parts = draw(st.lists(domain_components(), min_size=1, max_size=3))
    port = draw(st.one_of(st.just(""), st.integers(0, 65535).map(lambda p: f":{p}")))
    assume(len(parts) > 1 or port)
    assume(".".join(parts) not in ("docker.io", "index.docker.io"))
    return ".".join(parts) + port


def _length_verdict(full_name: str) -> str | None:
    return "255" if len(full_name) > NAME_TOTAL_LENGTH_MAX else None


@FAST
@given(tag_targets(), st.one_of(st.none(), tags))
def test_parse_tag_target_refuses_what_the_engine_refuses(target: tuple[str, str | None], tag: str | None) -> None:
    name, refusal = target
    text = name + (f":{tag}" if tag else "")
    if refusal is None:
        assert parse_tag_target(text) == (name, tag or "latest")
    else:
        with pytest.raises(ValueError, match=f"invalid reference format: .*{refusal}"):
            parse_tag_target(text)


# Each answered by the private dockerd 20.10 (POST /images/hello:latest/tag?repo=NAME&tag=1): 201 or 500.
ENGINE_TAKES = [
    "Foo.com/bar", "Foo:5000/bar", "Example.COM/x", "LocalHost:5000/x", "INDEX.docker.io/foo", "localhost/bar",
    "a" * 237, "a/" * 118 + "ab", "x.io/" + "a" * 250, "docker.io/" + "a" * 237, "index.docker.io/" + "a" * 237,
    "index.docker.io/a/" + "b" * 240,  # 258 characters as written, 252 as the engine spells it
    "0" * 64 + "/x", "x/" + "0" * 64, "a" * 63,
]
ENGINE_REFUSES = [
    "Foo/bar", "LOCALHOST/bar", "Localhost/bar", "AB/c/d", "[::1]:5000/x", "[::1]/x", "[abc]/x", "[ABC]/x",
    "a" * 238, "x.io/" + "a" * 251, "docker.io/" + "a" * 238, "index.docker.io/" + "a" * 238,
    "index.docker.io/a/" + "b" * 245, "a" * 64, "0123456789abcdef" * 4,
]


@pytest.mark.parametrize("name", ENGINE_TAKES)
def test_parse_tag_target_takes_what_the_engine_took(name: str) -> None:
    assert parse_tag_target(name + ":1") == (name, "1")


@pytest.mark.parametrize("name", ENGINE_REFUSES)
def test_parse_tag_target_refuses_what_the_engine_refused(name: str) -> None:
    with pytest.raises(ValueError, match="invalid reference format"):
        parse_tag_target(name + ":1")


@pytest.mark.parametrize(
    ("name", "full"),
    [
        ("alpine", "docker.io/library/alpine"),
        ("myorg/app", "docker.io/myorg/app"),
        ("docker.io/alpine", "docker.io/library/alpine"),
        ("index.docker.io/myorg/app", "docker.io/myorg/app"),
        ("localhost/app", "localhost/app"),
        ("localhost:5000/app", "localhost:5000/app"),
        ("Foo/bar", "docker.io/Foo/bar"),  # not a registry: so it breaks the lowercase rule
        ("a.b/c", "a.b/c"),
        ("LOCALHOST/x", "docker.io/LOCALHOST/x"),
    ],
)
def test_normalized_name(name: str, full: str) -> None:
    assert references.normalized_name(name) == full


@FAST
@given(references_("digest"))
def test_parse_tag_target_rejects_generated_digests(generated: tuple[str, Reference]) -> None:
    with pytest.raises(ValueError):
        parse_tag_target(generated[0])


# --- IDs -----------------------------------------------------------------------------------


@FAST
@given(st.text(HEX, min_size=64, max_size=64))
def test_image_ids(hex64: str) -> None:
    assert is_image_id(hex64)
    assert short_id("sha256:" + hex64) == hex64
    assert short_id(hex64) == hex64  # podman's bare hex
    assert not is_image_id("sha256:" + hex64)
    assert not is_image_id(hex64[:-1])
    assert not is_image_id(hex64 + "0")


@pytest.mark.parametrize("text", ["", "A" * 64, "g" * 64, "0" * 63, "0" * 65, " " + "0" * 63, "0" * 64 + "\n"])
def test_not_image_ids(text: str) -> None:
    assert not is_image_id(text)


def test_short_id_strips_only_a_leading_prefix() -> None:
    assert short_id("sha256:sha256:ab") == "sha256:ab"
    assert short_id("abc" + "sha256:") == "abcsha256:"


def test_module_exports_the_grammar_pieces() -> None:
    # The tree resolver relies on these being the compiled grammar, not loose approximations.
    assert references.REFERENCE.fullmatch("a/b:c") is not None
    assert references.REFERENCE.fullmatch("A/b:c") is not None  # "A" is a registry host
    assert references.REFERENCE.fullmatch("a/B:c") is None
