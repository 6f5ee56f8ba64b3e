import pytest

from labeler.errors import TaxonomyError
from labeler.taxonomy import load_taxonomy, parse_taxonomy, shipped_taxonomies


def test_shipped_taxonomies():
    assert {"ekman", "iemocap4", "goemotions"} <= set(shipped_taxonomies())
    ekman = load_taxonomy("ekman")
    assert ekman.label_names == ["anger", "disgust", "fear", "joy", "sadness", "surprise", "neutral"]
    assert len(load_taxonomy("iemocap4").labels) == 4
    go = load_taxonomy("goemotions")
    assert len(go.labels) == 28 and go.label_names[-1] == "neutral"
    assert ekman.hypotheses[3] == "This person is feeling joy."


def test_label_hypothesis_override_and_hash():
    base = {"name": "t", "version": "1", "labels": ["a", "b"]}
    t1 = parse_taxonomy(base)
    t2 = parse_taxonomy({**base, "labels": ["a", {"name": "b", "hypothesis": "Someone is b."}]})
    assert t2.hypotheses == ["This person is feeling a.", "Someone is b."]
    assert t1.template_hash != t2.template_hash
    assert t1.version == "1"


def test_load_from_path(tmp_path):
    p = tmp_path / "mine.yaml"
    p.write_text("name: mine\nversion: '2'\nhypothesis_template: 'The speaker sounds {label}.'\nlabels: [calm, tense]\n")
    t = load_taxonomy(str(p))
    assert t.name == "mine" and t.hypotheses == ["The speaker sounds calm.", "The speaker sounds tense."]


@pytest.mark.parametrize(
    "doc, expected",
    [
        ({"name": "x", "version": "1", "labels": ["a", "b"], "colour": "red"}, ["unknown field 'colour'"]),
        ({"name": "x", "version": "1", "labels": []}, ["labels: must be a non-empty list"]),
        ({"name": "x", "version": "1", "labels": ["a", "a"]}, ["duplicate label 'a'"]),
        ({"name": "x", "version": "1", "labels": ["a", "b"], "hypothesis_template": "no slot"}, ["hypothesis_template"]),
        ({"name": "Bad Name", "labels": ["a", {"name": "b", "extra": 1}]}, ["name: must be", "version: must be", "labels[1]: unknown field 'extra'"]),
    ],
    ids=["unknown-field", "empty", "duplicate", "template", "several-at-once"],
)
def test_invalid_taxonomies_report_every_problem(doc, expected):
    with pytest.raises(TaxonomyError) as exc:
        parse_taxonomy(doc, source="t.yaml")
    for text in expected:
        assert text in str(exc.value)


def test_unknown_shipped_name_lists_the_known_ones():
    with pytest.raises(TaxonomyError, match="ekman"):
        load_taxonomy("nope")


def test_hypothesis_templates_ensemble():
    base = {"name": "t", "version": "1", "labels": ["a", {"name": "b", "hypothesis": "Someone is b."}]}
    t = parse_taxonomy({**base, "hypothesis_templates": ["X {label}.", "Y {label}."]})
    assert t.is_ensemble and t.templates == ["X {label}.", "Y {label}."]
    assert t.hypothesis_sets == [["X a.", "Someone is b."], ["Y a.", "Someone is b."]]  # the override in every template
    assert t.hypotheses == ["X a.", "Someone is b."] and t.hypothesis_template == "X {label}."
    one = parse_taxonomy({**base, "hypothesis_templates": ["X {label}."]})
    plain = parse_taxonomy({**base, "hypothesis_template": "X {label}."})
    # one template in a list is the plain template: same hash (existing caches stay valid)
    assert not one.is_ensemble and one.template_hash == plain.template_hash and one.to_dict() == plain.to_dict()
    assert t.template_hash not in (plain.template_hash, parse_taxonomy({**base, "hypothesis_templates": ["Y {label}.", "X {label}."]}).template_hash)
    assert load_taxonomy("ekman").template_hash == "907e566e42ce7d22"  # as before ensembles existed


@pytest.mark.parametrize("extra, expected", [
    ({"hypothesis_template": "X {label}.", "hypothesis_templates": ["Y {label}."]}, "give one of them"),
    ({"hypothesis_templates": []}, "hypothesis_templates: must be a non-empty list"),
    ({"hypothesis_templates": "X {label}."}, "hypothesis_templates: must be a non-empty list"),
    ({"hypothesis_templates": ["X {label}.", "no slot"]}, "hypothesis_templates[1]: must be a string containing '{label}'"),
    ({"hypothesis_templates": ["X {label}.", "X {label}."]}, "duplicate template"),
])
def test_hypothesis_templates_errors(extra, expected):
    with pytest.raises(TaxonomyError) as exc:
        parse_taxonomy({"name": "t", "version": "1", "labels": ["a", "b"], **extra})
    assert expected in str(exc.value)
