import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from filters.bias_audit import BiasAudit
from pipeline.media.bias_terms import PERCEIVED_FIELD, TERMS_FIELD, TermsError, load_terms, split_labels
from pipeline.core.params import build
from pipeline.core.registry import get_stage
from pipeline.core.records import Sample
from pipeline.core.stage import Mapper, Needs


def sample(caption, image=None):
    return Sample(key="000000000", shard_id=0, url="http://x/a.jpg", caption=caption, image=image)


@pytest.fixture(scope="module")
def terms():
    return load_terms()


@pytest.mark.parametrize(
    "caption, labels",
    [
        ("A woman cooking pasta in her kitchen", ["activity/cooking", "gender/female"]),
        ("An old man repairing a bicycle", ["activity/repairing", "age/elderly", "gender/male"]),
        ("WOMEN'S football, final match", ["activity/sports", "gender/female"]),
        ("A middle-aged engineer at a laptop", ["age/adult", "occupation/technology"]),
        ("Black woman reading", ["ethnicity_nationality/african", "gender/female"]),
        ("A black cat on a white sofa", []),  # colour words alone are not ethnicity terms
        ("The manager of a human rights group", ["occupation/leadership"]),  # no "man" inside words
        ("", []),
        (None, []),
    ],
)
def test_caption_labels(terms, caption, labels):
    assert terms.labels(caption) == labels


def every_phrase_at_every_position(terms, caption):
    """The plain definition of `labels` for a caption of the list's words: each run of words that is a
    phrase of the list, at any length."""
    words = caption.split()
    return sorted({label for start in range(len(words)) for end in range(start + 1, len(words) + 1)
                   for label in terms.phrases.get(tuple(words[start:end]), ())})


_TERMS = load_terms()
# The list's own words (first words of several phrases, and of one-word and longer ones: "african",
# "old", "black", "feeding") mixed with words that start none.
_WORDS = sorted({word for phrase in _TERMS.phrases for word in phrase}) + ["a", "the", "cat", "photo", "of"]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(_WORDS), max_size=30))
def test_labels_find_every_phrase_wherever_it_starts_and_ends(words):
    caption = " ".join(words)
    assert _TERMS.labels(caption) == every_phrase_at_every_position(_TERMS, caption)


def test_groups_and_contexts_are_told_apart(terms):
    assert terms.is_group("gender/female") and terms.is_group("ethnicity_nationality/european")
    assert not terms.is_group("activity/cooking") and not terms.is_group("occupation/technology")


def test_stage_labels_captions_and_never_drops(terms):
    stage = get_stage("bias_audit")()
    assert isinstance(stage, Mapper) and stage.needs() == Needs(image=False, model=False)
    stage.setup()
    batch = [sample("A man working as a nurse"), sample("Sunset over the sea"), sample(None)]
    stage.score(batch)
    assert [s.fields[TERMS_FIELD] for s in batch] == ["gender/male,occupation/healthcare", "", ""]
    assert all(stage.keep(s).keep for s in batch)
    assert PERCEIVED_FIELD not in batch[0].fields  # no CLIP model configured
    assert split_labels(batch[0].fields[TERMS_FIELD]) == ["gender/male", "occupation/healthcare"]


def test_terms_path_replaces_the_word_lists(tmp_path):
    custom = tmp_path / "terms.yaml"
    custom.write_text(
        "groups:\n  gender:\n    female: [frau, frauen]\n    male: [mann]\n"
        "contexts:\n  activity:\n    cooking: [kocht, küche]\n"
    )
    params = build(BiasAudit.Params, {"terms_path": str(custom)}, "test")
    stage = BiasAudit(params)
    stage.check()
    stage.setup()
    s = sample("Eine Frau kocht in der Küche; a woman watches")
    stage.score_one(s)
    assert s.fields[TERMS_FIELD] == "activity/cooking,gender/female"  # "woman" is not in this list


@pytest.mark.parametrize(
    "text, message",
    [
        ("groups: [not, a, mapping]\ncontexts: {a: {b: [c]}}\n", "groups"),
        ("groups:\n  gender:\n    female: woman\ncontexts: {a: {b: [c]}}\n", "gender.female"),
        ("groups: {x: {a: [b]}}\ncontexts: {x: {c: [d]}}\n", "both groups and contexts"),
        ("groups: {x: {a: [b]}}\ncontexts: {y: {c: [d]}}\nperceived_attributes: {g: {only: one}}\n", "two prompts"),
        ("groups: {x: [unclosed\n", "not valid YAML"),
    ],
)
def test_broken_word_lists_fail_the_check_with_the_file_named(tmp_path, text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    stage = BiasAudit(BiasAudit.Params(terms_path=str(path)))
    with pytest.raises(TermsError, match=message) as caught:
        stage.check()
    assert str(path) in str(caught.value)
    assert isinstance(caught.value, ValueError)  # the command line reports ValueErrors as user errors


def test_missing_word_list_is_a_clear_error(tmp_path):
    with pytest.raises(TermsError, match="cannot read"):
        load_terms(str(tmp_path / "nope.yaml"))


def test_clip_model_without_weights_fails_the_check():
    stage = BiasAudit(BiasAudit.Params(clip_model="ViT-B-32"))
    with pytest.raises(ValueError, match="clip_pretrained"):
        stage.check()


# ---------------------------------------------------------------- perceived attributes (tiny random CLIP)


@pytest.fixture
def clip_stage(tiny_clip):
    params = BiasAudit.Params(
        clip_model=tiny_clip.model, clip_pretrained=tiny_clip.pretrained, clip_model_config=tiny_clip.model_config
    )
    return BiasAudit(params)


def test_clip_model_makes_the_stage_an_image_model_stage(clip_stage):
    assert clip_stage.needs() == Needs(image=True, model=True)
    assert BiasAudit().needs() == Needs(image=False)  # without a model: captions only
    assert "checkpoint file" in clip_stage.check()[0]


def test_perceived_label_is_the_most_similar_prompt(clip_stage, tiny_clip):
    import tiny_openclip
    import torch

    from pipeline.models.openclip import ModelSource, encoder_for, open_image

    clip_stage.setup()
    images = [tiny_openclip.png_bytes(seed) for seed in range(4)]
    batch = [sample("A woman cooking", image) for image in images] + [sample("A man", None)]
    clip_stage.score(batch)

    encoder = encoder_for(ModelSource(tiny_clip.model, tiny_clip.pretrained, tiny_clip.model_config))
    image_embeddings = encoder.encode_images([open_image(data) for data in images])
    expected = []
    for embedding in image_embeddings:
        labels = []
        for attribute, prompts in load_terms().perceived_prompts.items():
            similarity = encoder.encode_texts(list(prompts.values())) @ embedding
            labels.append(f"{attribute}/{list(prompts)[int(torch.argmax(similarity))]}")
        expected.append(",".join(sorted(labels)))
    assert [s.fields[PERCEIVED_FIELD] for s in batch] == [*expected, ""]  # no image: no estimate
    assert all(s.fields[TERMS_FIELD] for s in batch)  # caption terms still counted
    assert all(clip_stage.keep(s).keep for s in batch)


# ---------------------------------------------------------------- in a real run, then in the report


@pytest.mark.slow
def test_run_with_clip_estimates_then_report(tiny_clip, tmp_path):
    import io
    import json

    import pyarrow as pa
    import pyarrow.parquet as pq
    from PIL import Image

    from pipeline.cli import main
    from pipeline.demo.localweb import LocalWeb
    from pipeline.tools.report_build import write_reports

    web_root = tmp_path / "web"
    web_root.mkdir()
    captions = ["A woman cooking in a kitchen", "A man fixing a car engine", "Sunset over the sea", "x"]
    for i, colour in enumerate(("red", "green", "blue", "white")):
        buffer = io.BytesIO()
        Image.new("RGB", (64, 48), colour).save(buffer, "JPEG")
        (web_root / f"{i}.jpg").write_bytes(buffer.getvalue())
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(
        "stages:\n"
        "  - bias_audit:\n"
        f"      clip_model: {tiny_clip.model}\n"
        f"      clip_pretrained: {tiny_clip.pretrained}\n"
        f"      clip_model_config: {tiny_clip.model_config}\n"
        "  - caption: {min_chars: 5, min_words: 2}\n"
    )
    out = tmp_path / "out"
    with LocalWeb(web_root) as web:
        urls = tmp_path / "urls.parquet"
        pq.write_table(pa.Table.from_pylist(
            [{"url": web.url(f"{i}.jpg"), "caption": caption} for i, caption in enumerate(captions)]), urls)
        assert main(["run", "--recipe", str(recipe), "--input", str(urls), "--output", str(out),
                     "--allow-private-network", "--direct_num_workers=1"]) == 0

    kept = pq.read_table(out / "shards" / "00000.parquet").to_pylist()
    assert [row["bias_terms"] for row in kept] == [
        "activity/cooking,gender/female", "activity/repairing,gender/male", ""]
    assert all(row["bias_perceived"].count("/") == 2 for row in kept)  # one gender and one age estimate each
    write_reports(str(out))
    report = json.loads((out / "report" / "audit.json").read_text())
    assert report["funnel"][-1]["remaining"] == report["counts"]["kept"] == 3
    bias = report["bias"]
    assert bias["mentions"]["rows"] == {"kept": 3, "caption": 1}
    assert bias["perceived"]["rows"] == {"kept": 3, "caption": 1}  # the caption stage ran after the estimate
    assert sum(n for label, counts in bias["perceived"]["labels"].items()
               if label.startswith("gender/") for n in counts.values()) == 4
