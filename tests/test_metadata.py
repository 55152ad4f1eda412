"""Typed metadata (``aiovirt.metadata``) and ``Domain.write_metadata``/``read_metadata``.

Offline: property tests (hypothesis) that every storable value survives ``dumps``/``loads``,
``to_element``/``from_element`` and a whole domain pretty-printed and parsed again; the XML is
readable (elements named by keys, ``type`` attributes); bad values and malformed XML fail
saying where and what; ``read``/``write`` on a domain tree.

Live, against the suite's libvirtd, on the test driver and the QEMU driver (defined only,
never started): ``write_metadata``/``read_metadata`` round-trip, and the codec's XML survives
libvirt's own parsing and reformatting (the full domain XML decodes too).
"""

from __future__ import annotations

import base64
import contextlib
import uuid
from collections.abc import AsyncIterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from lxml import etree

import aiovirt
from aiovirt.xml import safe as xmlsafe
from aiovirt.xml.metadata import dumps, from_element, loads, read, same, to_element, write

NS = "https://example.org/aiovirt-test/app"
NS2 = "https://example.org/aiovirt-test/other"
INF = float("inf")
NAN = float("nan")
VIR_ERR_NO_DOMAIN_METADATA = 80


def q(local: str, ns: str = NS) -> str:
    """Clark notation ``{ns}local``."""
    return f"{{{ns}}}{local}"


def domain_tree() -> etree._Element:
    return xmlsafe.parse("<domain><name>x</name></domain>")


# -- strategies -------------------------------------------------------------------------------
# Names that would be valid XML element names (and some that look like it but are reserved).
ELEMENT_NAMES = st.from_regex(r"[A-Za-z_][A-Za-z0-9_.-]{0,12}", fullmatch=True)

TEXTS = st.one_of(
    st.text(),                                              # any unicode, control chars included
    st.text(st.characters(exclude_categories=())),          # ... and lone surrogates
    st.text(st.sampled_from(" \t\n\r"), min_size=1),        # whitespace only
    st.builds(lambda pad, body, tail: pad + body + tail,    # leading/trailing whitespace
              st.text(st.sampled_from(" \t\n\r")), st.text(max_size=5),
              st.text(st.sampled_from(" \t\n\r"))),
    st.sampled_from(["", " ", "\x00", "\x01", "\r", "\r\n", "a\rb", "\ufffe", "\uffff",
                     "\ud800", "]]>", "<&>\"'", "&amp;", "\U0001f680", "\x7f\x85\u2028"]),
)

KEYS = st.one_of(
    TEXTS,
    ELEMENT_NAMES,
    ELEMENT_NAMES.map(lambda n: "xml" + n),
    ELEMENT_NAMES.map(lambda n: "XmL" + n),
    st.builds(lambda w1, n, w2: w1 + n + w2,  # names with whitespace around them
              st.sampled_from(["", " ", "\n", "\t"]), ELEMENT_NAMES,
              st.sampled_from(["", " ", "\n", "\r", "\t", "\n\n", " \n"])),
    st.sampled_from(["", "item", "Item", "ITEM", "xml", "XML", "xmlns", "data", "type",
                     "encoding", "key", "key64", "a b", " a", "a ", "a:b", "1abc", "-x", ".x",
                     "é", "naïve", "\x00", "\t", "a\tb"]),
)

FLOATS = st.one_of(
    st.floats(),  # includes nan, inf, -inf, -0.0, subnormals
    st.sampled_from([INF, -INF, -0.0, 0.0, NAN, 5e-324, -1.7976931348623157e308, 0.1]),
)

INTS = st.one_of(
    st.integers(),
    st.integers(min_value=-(2**1000), max_value=2**1000),
    # 10**4299 has 4300 digits, the most Python's int/str conversion allows by default
    st.sampled_from([2**63, -(2**63) - 1, 2**64, -(2**64), 2**128 + 1, 10**4299, -(10**4299),
                     2**12001, -(2**12500)]),  # the last two travel in hex
)

SCALARS = st.one_of(st.none(), st.booleans(), INTS, FLOATS, TEXTS, st.binary(max_size=64))

VALUES = st.recursive(
    SCALARS,
    lambda children: st.one_of(st.lists(children, max_size=5),
                               st.dictionaries(KEYS, children, max_size=5)),
    max_leaves=30,
)

PREFIXES = st.sampled_from(["app", "m", "wire_1"])
PROPERTY = settings(max_examples=200, deadline=None)


# -- same() itself: the property tests rest on it ---------------------------------------------
@pytest.mark.parametrize("a, b, expected", [
    (1, 1, True),
    (NAN, NAN, True),
    (INF, INF, True),
    (0.0, -0.0, False),
    (1, True, False),
    (1, 1.0, False),
    (0, None, False),
    ("x", b"x", False),
    (b"x", bytearray(b"x"), False),
    ([1, [2.5]], [1, [2.5]], True),
    ([1], [1, 2], False),
    ([NAN], [NAN], True),
    ({"a": 1, "b": 2}, {"a": 1, "b": 2}, True),
    ({"a": 1, "b": 2}, {"b": 2, "a": 1}, False),  # key order is part of the value
    ({"a": 1}, {"a": True}, False),
    ({"a": [1]}, {"a": (1,)}, False),
])
def test_same_compares_types_order_and_nan(a, b, expected):
    assert same(a, b) is expected
    assert same(b, a) is expected


# -- round trips (properties) -----------------------------------------------------------------
@PROPERTY
@given(VALUES, PREFIXES)
def test_dumps_loads_round_trip(value, prefix):
    text = dumps(value, namespace=NS, prefix=prefix)
    assert same(loads(text), value)
    assert same(loads(text.encode("utf-8")), value)


@PROPERTY
@given(VALUES, PREFIXES)
def test_to_element_from_element_round_trip(value, prefix):
    element = to_element(value, namespace=NS, prefix=prefix, name="settings")
    assert element.tag == q("settings")
    assert element.prefix == prefix
    # the outer element is in the namespace, its content unqualified
    assert all(etree.QName(e).namespace is None for e in element.iter() if e is not element)
    assert same(from_element(element), value)


@PROPERTY
@given(VALUES)
def test_write_read_survives_pretty_printed_domain(value):
    tree = domain_tree()
    write(tree, value, namespace=NS, prefix="app")
    assert same(read(tree, NS), value)  # straight from the tree
    text = xmlsafe.to_string(tree)  # pretty-printed, as a whole domain
    again = xmlsafe.parse(text)
    assert again.findtext("name") == "x"
    assert same(read(again, NS), value)
    # a second pretty-print/parse cycle (of a tree that came from text) keeps the value too
    assert same(read(xmlsafe.parse(xmlsafe.to_string(again)), NS), value)


@settings(max_examples=100, deadline=None)
@given(VALUES, VALUES)
def test_second_write_replaces_first(first, second):
    tree = domain_tree()
    write(tree, first, namespace=NS, prefix="app")
    write(tree, second, namespace=NS, prefix="other", name="again")
    tree = xmlsafe.parse(xmlsafe.to_string(tree))
    children = list(tree.find("metadata"))
    assert [c.tag for c in children] == [q("again")]
    assert same(read(tree, NS), second)


def test_deepest_allowed_nesting_round_trips_and_one_more_is_refused():
    def nested(levels: int) -> list:
        value: list = []
        for _ in range(levels - 1):
            value = [value]
        return value

    deepest = nested(101)  # the outermost list is level 0, the innermost level 100
    assert same(loads(dumps(deepest, namespace=NS)), deepest)
    with pytest.raises(ValueError, match=r"nested deeper than 100 levels"):
        dumps(nested(102), namespace=NS)


# -- readability ------------------------------------------------------------------------------
def test_dict_with_simple_keys_is_readable_xml():
    value = {"owner": "ops", "replicas": 3, "ratio": 0.5, "enabled": True, "nothing": None,
             "blob": b"hi", "tags": ["a", "b"]}
    text = dumps(value, namespace=NS, prefix="app")
    root = etree.fromstring(text)

    assert root.tag == q("data")
    assert root.prefix == "app"
    assert root.nsmap == {"app": NS}
    assert root.get("type") == "dict"
    assert text.count("xmlns") == 1  # the namespace is declared once, on the root

    children = list(root)
    assert [c.tag for c in children] == list(value)  # unqualified, named by the keys
    assert all(c.prefix is None for c in root.iter() if c is not root)
    owner, replicas, ratio, enabled, nothing, blob, tags = children
    assert (owner.text, dict(owner.attrib)) == ("ops", {})  # plain strings: no type at all
    assert (replicas.text, dict(replicas.attrib)) == ("3", {"type": "int"})
    assert (ratio.text, dict(ratio.attrib)) == ("0.5", {"type": "float"})
    assert (enabled.text, dict(enabled.attrib)) == ("true", {"type": "bool"})
    assert (nothing.text, dict(nothing.attrib), len(nothing)) == (None, {"type": "null"}, 0)
    assert (blob.text, dict(blob.attrib)) == (base64.b64encode(b"hi").decode(),
                                              {"type": "bytes"})
    assert tags.get("type") == "list"
    assert [(i.tag, i.text, dict(i.attrib)) for i in tags] == [
        ("item", "a", {}), ("item", "b", {})]


def test_prefix_and_name_choose_the_root_element():
    root = etree.fromstring(dumps({"a": 1}, namespace=NS2, prefix="cfg", name="settings"))
    assert root.tag == q("settings", NS2)
    assert root.prefix == "cfg"
    assert [c.tag for c in root] == ["a"]
    assert root[0].prefix is None


@pytest.mark.parametrize("name", ["a b", "1st", "xml-stuff", "XMLfoo", "", "a:b", "-x"])
def test_unusable_root_name_is_refused(name):
    with pytest.raises(ValueError, match="not usable as an element name"):
        to_element(1, namespace=NS, name=name)


def test_keys_that_are_not_element_names_become_item_elements():
    value = {"a b": 1, "item": 2, "xmlish": 3, "XMLish": 4, "": 5, "2x": 6, "é": 7,
             "a:b": 8, "tab\tkey": 9, "ok_name.v-2": 10, "Item": 11}
    root = etree.fromstring(dumps(value, namespace=NS, prefix="app"))
    got = [(etree.QName(c).localname, c.get("key"), c.get("key64"), c.text) for c in root]
    assert got == [
        ("item", "a b", None, "1"),
        ("item", "item", None, "2"),
        ("item", "xmlish", None, "3"),
        ("item", "XMLish", None, "4"),
        ("item", "", None, "5"),
        ("item", "2x", None, "6"),
        ("item", "é", None, "7"),
        ("item", "a:b", None, "8"),
        ("item", "tab\tkey", None, "9"),
        ("ok_name.v-2", None, None, "10"),   # valid names are element names
        ("Item", None, None, "11"),          # only "item" itself is reserved
    ]
    assert all(etree.QName(c).namespace is None for c in root)
    assert same(loads(dumps(value, namespace=NS)), value)


def test_key_xml_cannot_hold_is_base64_in_key64():
    key = "nul\x00and\ud800"
    root = etree.fromstring(dumps({key: "v"}, namespace=NS))
    (child,) = root
    assert child.tag == "item"
    assert child.get("key") is None
    assert base64.b64decode(child.get("key64")).decode("utf-8", "surrogatepass") == key
    assert child.text == "v"


def test_strings_are_plain_text_unless_xml_cannot_hold_them():
    value = {"ws": "  padded\t\r\n ", "markup": "<a>&amp;]]>", "ctl": "a\x00b", "sur": "\udfff",
             "nonchar": "\ufffe"}
    root = etree.fromstring(dumps(value, namespace=NS))
    ws, markup, ctl, sur, nonchar = root
    assert (ws.text, dict(ws.attrib)) == ("  padded\t\r\n ", {})
    assert (markup.text, dict(markup.attrib)) == ("<a>&amp;]]>", {})
    for element, raw in ((ctl, "a\x00b"), (sur, "\udfff"), (nonchar, "\ufffe")):
        assert dict(element.attrib) == {"type": "str", "encoding": "base64"}
        assert base64.b64decode(element.text).decode("utf-8", "surrogatepass") == raw


def test_huge_int_and_special_floats_are_readable_text():
    value = [2**100, -(2**64), INF, -INF, -0.0, NAN]
    root = etree.fromstring(dumps(value, namespace=NS))
    assert [(i.get("type"), i.text) for i in root] == [
        ("int", str(2**100)), ("int", "-18446744073709551616"), ("float", "inf"),
        ("float", "-inf"), ("float", "-0.0"), ("float", "nan")]


# -- edge cases that once broke ------------------------------------------------------------
@pytest.mark.parametrize("key", ["a\n", "item\n", "owner\n"])
def test_key_with_a_trailing_newline_round_trips(key):
    value = {key: 1}
    (child,) = etree.fromstring(dumps(value, namespace=NS))
    assert (child.tag, child.get("key")) == ("item", key)
    assert same(loads(dumps(value, namespace=NS)), value)


def test_int_beyond_4300_digits_round_trips_in_hex():
    value = {"big": 10**5000, "negative": -(3**20000)}
    root = etree.fromstring(dumps(value, namespace=NS))
    assert [c.get("encoding") for c in root] == ["hex", "hex"]
    assert same(loads(dumps(value, namespace=NS)), value)


# -- errors: values that cannot be stored -----------------------------------------------------
@pytest.mark.parametrize("value, where, what", [
    ({"a": {1, 2}}, "value['a']", "cannot store set"),
    ((1, 2), "value", "cannot store tuple"),
    ([0, object()], "value[1]", "cannot store object"),
    ({"a": [0, {"b": (1,)}]}, "value['a'][1]['b']", "cannot store tuple"),
    ({"x": 1j}, "value['x']", "cannot store complex"),
    ([frozenset()], "value[0]", "cannot store frozenset"),
    ({1: "x"}, "value", "dict keys must be str, not int (1)"),
    ({"a": {None: 1}}, "value['a']", "dict keys must be str, not NoneType (None)"),
    ({"a": {("t",): 1}}, "value['a']", "dict keys must be str, not tuple"),
])
def test_unsupported_value_raises_type_error_saying_where(value, where, what):
    for call in (lambda: dumps(value, namespace=NS), lambda: to_element(value, namespace=NS)):
        with pytest.raises(TypeError) as err:
            call()
        message = str(err.value)
        assert message.startswith(f"{where}: "), message
        assert what in message


def test_failed_write_leaves_the_domain_tree_alone():
    tree = domain_tree()
    write(tree, {"keep": 1}, namespace=NS)
    before = xmlsafe.to_string(tree)
    with pytest.raises(TypeError, match=r"value\['bad'\]: cannot store set"):
        write(tree, {"bad": {1}}, namespace=NS)
    assert xmlsafe.to_string(tree) == before
    assert same(read(tree, NS), {"keep": 1})


# -- errors: malformed metadata XML -----------------------------------------------------------
@pytest.mark.parametrize("xml, fragments", [
    ('<data type="int">abc</data>', ["metadata data (line 1)", "bad int", "'abc'"]),
    ('<data type="int"></data>', ["bad int"]),
    ('<data type="weird"/>', ["metadata data (line 1)", "unknown type 'weird'"]),
    ('<data type="bytes">!!!</data>', ["bad bytes", "base64"]),
    ('<data type="bytes">abc</data>', ["bad bytes"]),  # bad padding
    ('<data type="str" encoding="base64">***</data>', ["bad str"]),
    ('<data type="str" encoding="base64">/w==</data>', ["bad str", "utf-8"]),  # 0xff
    ('<data type="bool">yes</data>', ["bad bool", "'yes' is not true or false"]),
    ('<data type="float">1.5.2</data>', ["bad float", "'1.5.2'"]),
    ('<data>text<child/></data>', ["bad str", "a string holds no elements"]),
    ('<data type="dict"><item key64="@@">1</item></data>', ["bad key64 '@@'", "base64"]),
    (f'<a:data xmlns:a="{NS}" type="dict"><a:n type="int">abc</a:n></a:data>',
     ["data.n", "bad int", "'abc'"]),
    ('<data type="list"><item>ok</item><item type="int">x</item></data>',
     ["data[1]", "bad int", "'x'"]),
    ('<data type="dict">\n<ok>1</ok>\n<n type="weird"/>\n</data>',
     ["data.n (line 3)", "unknown type 'weird'"]),
])
def test_malformed_metadata_raises_value_error_naming_the_problem(xml, fragments):
    with pytest.raises(ValueError) as err:
        loads(xml)
    message = str(err.value)
    for fragment in fragments:
        assert fragment in message, (fragment, message)


def test_metadata_that_is_not_xml_raises_xml_input_error():
    with pytest.raises(xmlsafe.XMLInputError) as err:
        loads("<data type='int'>1</dat>")
    assert isinstance(err.value, ValueError)


def test_read_reports_malformed_element_in_a_domain():
    tree = xmlsafe.parse(f'<domain><name>x</name><metadata><a:data xmlns:a="{NS}" '
                         'type="int">abc</a:data></metadata></domain>')
    with pytest.raises(ValueError, match="bad int"):
        read(tree, NS)


# -- read / write on a domain tree ------------------------------------------------------------
def test_read_without_metadata_returns_the_default():
    tree = domain_tree()
    assert read(tree, NS) is None
    sentinel = object()
    assert read(tree, NS, sentinel) is sentinel
    assert read(tree, NS, default={"d": 1}) == {"d": 1}


def test_read_with_metadata_of_other_namespaces_only_returns_the_default():
    tree = xmlsafe.parse(f'<domain><name>x</name><metadata><o:data xmlns:o="{NS2}" type="int">'
                         '1</o:data><plain type="int">2</plain></metadata></domain>')
    sentinel = object()
    assert read(tree, NS, sentinel) is sentinel
    assert read(tree, NS2) == 1


def test_write_creates_metadata_and_is_readable():
    tree = domain_tree()
    write(tree, {"owner": "ops"}, namespace=NS, prefix="app")
    (element,) = tree.find("metadata")
    assert element.tag == q("data") and element.prefix == "app"
    assert element.find("owner").text == "ops"
    assert read(tree, NS) == {"owner": "ops"}


def test_write_replaces_same_namespace_and_keeps_the_others():
    tree = xmlsafe.parse(
        f'<domain><name>x</name><metadata>'
        f'<o:info xmlns:o="{NS2}"><o:owner>someone else</o:owner></o:info>'
        f'<old:stuff xmlns:old="{NS}">replaced</old:stuff>'
        f'<plain>no namespace</plain>'
        f'</metadata><memory>1</memory></domain>')
    write(tree, {"n": 1}, namespace=NS, prefix="app")
    metadata_element = tree.find("metadata")
    assert [c.tag for c in metadata_element] == [q("info", NS2), "plain", q("data")]
    assert metadata_element.find(q("info", NS2)).findtext(q("owner", NS2)) == "someone else"
    assert metadata_element.findtext("plain") == "no namespace"
    assert same(read(tree, NS), {"n": 1})
    assert tree.findtext("memory") == "1"
    assert len(tree.findall("metadata")) == 1

    write(tree, [2.5], namespace=NS2, prefix="o")  # now the other one is replaced
    assert [c.tag for c in tree.find("metadata")] == ["plain", q("data"), q("data", NS2)]
    assert same(read(tree, NS), {"n": 1})
    assert same(read(tree, NS2), [2.5])


# -- live: a real libvirtd --------------------------------------------------------------------
TEST_DOMAIN = ("<domain type='test'><name>{name}</name><memory unit='MiB'>8</memory>"
               "<os><type>hvm</type></os></domain>")
QEMU_DOMAIN = ("<domain type='kvm'><name>{name}</name><memory unit='MiB'>64</memory>"
               "<os><type arch='x86_64' machine='pc'>hvm</type></os></domain>")
DRIVERS = [
    pytest.param(("test", "/default", TEST_DOMAIN), id="test-driver"),
    pytest.param(("qemu", "/system", QEMU_DOMAIN), id="qemu-driver"),
]

LIVE_VALUE = {
    "owner": "ops", "replicas": 3, "huge": 2**200, "negative": -(2**70), "ratio": 0.1,
    "inf": INF, "ninf": -INF, "nzero": -0.0, "nan": NAN, "enabled": True, "disabled": False,
    "nothing": None, "blob": bytes(range(256)), "empty_blob": b"",
    "padded": "  padded  ", "blank": "   ", "empty": "", "lines": "a\r\nb\n", "tab": "\t",
    "control": "nul\x00soh\x01", "unicode": "ünïcødé \U0001f680", "surrogate": "\ud800",
    "markup": "<a href='x'>&amp;</a> ]]>",
    "tags": ["a", 1, None, [], {}, [["deep"]], b"", " ", ""],
    "item": "key named item", "xmlish": 1, "with space": 2, "": 3, "\x00": 4,
    "tab\tkey": 5, "cr\rkey": 6, "é": 7,
    "nested": {"level": {"deeper": {"list": [1.5, {"k": "v"}]}}},
}

@contextlib.asynccontextmanager
async def defined_domain(daemon, driver) -> AsyncIterator[aiovirt.Domain]:
    """A freshly defined (not started) domain, undefined again however the test ends."""
    name_of_driver, path, template = driver
    async with aiovirt.connect(daemon.uri(name_of_driver, path)) as conn:
        dom = await conn.define_xml(template.format(name=f"meta-{uuid.uuid4().hex[:8]}"))
        try:
            yield dom
        finally:
            await dom.undefine()


@pytest.mark.parametrize("driver", DRIVERS)
async def test_write_metadata_round_trips_on_a_live_domain(daemon, driver):
    async with defined_domain(daemon, driver) as dom:
        await dom.write_metadata(LIVE_VALUE, namespace=NS, prefix="app")
        assert same(await dom.read_metadata(namespace=NS), LIVE_VALUE)
        # libvirt's own answer, and the full domain XML as libvirt reformats it
        assert same(loads(await dom.metadata(uri=NS)), LIVE_VALUE)
        xml = await dom.xml()
        assert f'xmlns:app="{NS}"' in xml
        assert same(read(xmlsafe.parse(xml), NS), LIVE_VALUE)


@pytest.mark.parametrize("driver", DRIVERS)
async def test_write_metadata_replaces_and_namespaces_coexist_on_a_live_domain(daemon, driver):
    async with defined_domain(daemon, driver) as dom:
        await dom.write_metadata({"first": 1}, namespace=NS, prefix="app")
        await dom.write_metadata({"second": [2.5, None]}, namespace=NS, prefix="app")
        await dom.write_metadata(["other", b"\x01"], namespace=NS2, prefix="other")
        assert same(await dom.read_metadata(namespace=NS), {"second": [2.5, None]})
        assert same(await dom.read_metadata(namespace=NS2), ["other", b"\x01"])
        tree = xmlsafe.parse(await dom.xml())
        namespaces = [etree.QName(c).namespace for c in tree.find("metadata")]
        assert sorted(namespaces) == sorted([NS, NS2])
        assert same(read(tree, NS), {"second": [2.5, None]})
        assert same(read(tree, NS2), ["other", b"\x01"])


@pytest.mark.parametrize("driver", DRIVERS)
async def test_live_unsupported_value_is_refused_before_libvirt_is_asked(daemon, driver):
    async with defined_domain(daemon, driver) as dom:
        await dom.write_metadata({"keep": True}, namespace=NS)
        with pytest.raises(TypeError, match=r"value\['bad'\]: cannot store set"):
            await dom.write_metadata({"bad": {1}}, namespace=NS, prefix="app")
        assert same(await dom.read_metadata(namespace=NS), {"keep": True})


@pytest.mark.parametrize("driver", DRIVERS)
async def test_live_read_metadata_of_an_unused_namespace_gives_the_default(daemon, driver):
    async with defined_domain(daemon, driver) as dom:
        await dom.write_metadata(1, namespace=NS)
        assert await dom.read_metadata(namespace=NS2) is None
        assert await dom.read_metadata(namespace=NS2, default="none") == "none"
        with pytest.raises(aiovirt.NoSuchMetadata) as err:
            await dom.metadata(uri=NS2)
        assert err.value.code == VIR_ERR_NO_DOMAIN_METADATA
