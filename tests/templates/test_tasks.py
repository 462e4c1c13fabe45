"""Golden ids: every task template, token for token, as AR-Omni builds it (reference §2)."""
from __future__ import annotations

import pytest

from aromni.layout import AR_OMNI_V0_1 as L
from aromni.model.text import load_text_tokenizer
from aromni.sample import check_row, labels_and_weights, LossPolicy
from aromni.tasks import TemplateError, default_instruction, render_task
from tests.fixtures.golden_bpe import write_golden_bpe

IMG = list(range(1024))                       # VQ codes 0..1023 -> ids 4..1027
IMG_IDS = [8197, *range(4, 1028), 8196]
SPEECH = [0, 1, 4095]                          # -> 8724, 8725, 12819
USER = [16642, 16409]                          # "USER:"
GPT = [16644, 16409]                           # "GPT:"
SP_GPT = [16645, 16409]                        # " GPT:" (text-to-image only)
A_CAT = [16448, 16656, 16657]                  # "a cat"
THIS_IS_INPUT = [16649, 16647, 16654, 16409, 16604]          # "This is input: " (TTS)
SP_THIS_IS_INPUT = [16604, 16649, 16647, 16654, 16409, 16604]  # " This is input: " (text-to-image)
DESCRIBE = [16419, 16452, 16466, 16450, 16465, 16456, 16449, 16452, 16604, 16467, 16455, 16646, 16650, 16460, 16448,
            16454, 16452, 16397]       # "Describe this image."
CREATE = [16418, 16465, 16452, 16657, 16452, 16655, 16604, 16463, 16456, 16450, 16467, 16468, 16465, 16452, 16604,
          16467, 16455, 16657, 16604, 16460, 16657, 16450, 16455, 16452, 16466, 16604, 16467, 16455, 16452, 16604,
          16452, 16466, 16466, 16452, 16461, 16450, 16452, 16604, 16462, 16453, 16604, 16467, 16455, 16646, 16604,
          16467, 16452, 16471, 16467, 16397]  # "Create a picture that matches the essence of this text."
ASR_INSTR = [16418, 16448, 16461, 16604, 16472, 16462, 16468, 16604, 16463, 16459, 16452, 16448, 16466, 16452, 16656,
             16462, 16461, 16469, 16452, 16465, 16467, 16604, 16467, 16455, 16646, 16604, 16466, 16463, 16452, 16452,
             16450, 16455, 16651, 16467, 16462, 16604, 16470, 16465, 16456, 16467, 16467, 16452, 16461, 16604, 16467,
             16452, 16471, 16467, 16414]  # "Can you please convert this speech into written text?"
TTS_INSTR = [16418, 16462, 16461, 16469, 16452, 16465, 16467, 16604, 16467, 16455, 16646, 16604, 16467, 16452, 16471,
             16467, 16651, 16467, 16462, 16604, 16466, 16463, 16452, 16452, 16450, 16455, 16397]  # "Convert this text into speech."

GOLDEN = {
    "image_caption": ([0, *USER, *IMG_IDS, *DESCRIBE, 12830, *GPT, *A_CAT, 2],
                      [("user", "text", 0, 3), ("user", "image", 3, 1029), ("user", "text", 1029, 1050),
                       ("assistant", "text", 1050, 1054)]),
    "text_to_image": ([0, *USER, *CREATE, *SP_THIS_IS_INPUT, *A_CAT, 12830, *SP_GPT, *IMG_IDS, 2],
                      [("user", "text", 0, 65), ("assistant", "image", 65, 1091), ("assistant", "text", 1091, 1092)]),
    "speech_to_text": ([0, *USER, *ASR_INSTR, 12821, 8724, 8725, 12819, 12820, 12830, *GPT, *A_CAT, 2],
                       [("user", "text", 0, 52), ("user", "speech", 52, 57), ("user", "text", 57, 60),
                        ("assistant", "text", 60, 64)]),
    "text_to_speech": ([0, *USER, *TTS_INSTR, *THIS_IS_INPUT, *A_CAT, 12830, *GPT, 12821, 8724, 8725, 12819, 12820, 2],
                       [("user", "text", 0, 41), ("assistant", "speech", 41, 46), ("assistant", "text", 46, 47)]),
    "text_to_text": ([0, *A_CAT, 2], [("user", "text", 0, 1), ("assistant", "text", 1, 5)]),
}
INPUTS = {"image_caption": dict(response="a cat", image_codes=IMG),
          "text_to_image": dict(input_text="a cat", image_codes=IMG),
          "speech_to_text": dict(response="a cat", speech_codes=SPEECH),
          "text_to_speech": dict(input_text="a cat", speech_codes=SPEECH),
          "text_to_text": dict(response="a cat")}


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    return load_text_tokenizer(write_golden_bpe(tmp_path_factory.mktemp("bpe") / "tokenizer.json"))


def test_golden_bpe_pieces(tok):
    """The pieces the templates use, encoded on their own; leading spaces give different ids."""
    assert tok.encode("USER:") == USER and tok.encode("GPT:") == GPT and tok.encode(" GPT:") == SP_GPT
    assert tok.encode("This is input: ") == THIS_IS_INPUT
    assert tok.encode(" This is input: ") == SP_THIS_IS_INPUT


@pytest.mark.parametrize("task", sorted(GOLDEN))
def test_task_golden_ids(tok, task):
    ids, segs = render_task(task, tok.encode, **INPUTS[task])
    want_ids, want_segs = GOLDEN[task]
    assert ids == want_ids
    assert [(s.role, s.modality, s.start, s.end) for s in segs] == want_segs
    assert check_row(ids, segs) == []


def test_pieces_are_encoded_separately_not_joined(tok):
    """Encoding the joined prompt string gives other ids at the seams; the template must not do that."""
    ids, _ = render_task("text_to_speech", tok.encode, input_text="a cat", speech_codes=SPEECH)
    joined = tok.encode("USER:" + default_instruction("text_to_speech") + "This is input: " + "a cat")
    assert ids[1:1 + len(joined)] != joined


def test_instruction_override_and_missing_inputs(tok):
    ids, _ = render_task("image_caption", tok.encode, response="a cat", image_codes=IMG, instruction="a cat")
    assert ids[1029:1033] == [*A_CAT, 12830]
    with pytest.raises(TemplateError, match="image"):
        render_task("image_caption", tok.encode, response="a cat")
    with pytest.raises(TemplateError, match="response"):
        render_task("image_caption", tok.encode, response="   ", image_codes=IMG)
    with pytest.raises(TemplateError, match="1024"):
        render_task("text_to_image", tok.encode, input_text="x", image_codes=IMG[:-1])
    with pytest.raises(ValueError, match="out of range"):
        render_task("text_to_speech", tok.encode, input_text="x", speech_codes=[4096])


def test_caption_response_tail_weighted(tok):
    """Reference §4: for image_caption / speech_to_text the last len(response) label positions (final eos excluded)
    get weight 2.0."""
    ids, segs = render_task("image_caption", tok.encode, **INPUTS["image_caption"])
    labels, w = labels_and_weights(ids, segs, "image_caption", LossPolicy(on="all"))
    assert labels[0] == -100 and (labels[1:] == ids[1:]).all()
    assert w.tolist()[-4:] == [2.0, 2.0, 2.0, 1.0]     # "a cat" = 3 tokens, then eos at 1.0
    assert (w[1:-4] == 1.0).all()
    labels, w = labels_and_weights(ids, segs, "image_caption", LossPolicy(on="assistant"))
    assert (labels[:1050] == -100).all() and labels[1050:].tolist() == [*A_CAT, 2]
    assert w[:1050].sum() == 0 and w[1050:].tolist() == [2.0, 2.0, 2.0, 1.0]
    _, w = labels_and_weights(ids, segs, "text_to_image", LossPolicy(on="all"))
    assert set(w[1:].tolist()) == {1.0}


def test_layout_constants_match_reference():
    assert (L.bos, L.eos, L.image_code_start, L.image_code_end, L.eoi, L.boi) == (0, 2, 4, 8195, 8196, 8197)
    assert (L.speech_code_start, L.speech_code_end, L.eoa, L.boa, L.eoh, L.eom, L.ins, L.res) == \
        (8724, 12819, 12820, 12821, 12830, 12831, 12840, 12841)


def test_single_plans_render_what_the_renderer_renders(tok):
    """Render replays a recorded plan for single-turn rows: for every task, instruction and media shape it gives the
    renderer's ids and segments, and no plan where the renderer refuses the row."""
    import random

    from aromni.tasks import get_task
    from aromni.tasks.render import single_plan
    from aromni.tasks.table import task_names
    rng = random.Random(0)
    words = ["a", "cat", "sat", " on", "the", "mat.", "Describe", "GPT:", "USER:", "\u00e9t\u00e9", "  x"]
    compared = refused = 0
    for name in task_names():
        task = get_task(name)
        if task.dialog:
            assert single_plan(task, tok.encode) is None
            continue
        for instruction in (None, "", "Say it again."):
            for has_image in (False, True):
                for has_speech in (False, True):
                    plan = single_plan(task, tok.encode, instruction=instruction, has_image=has_image,
                                       has_speech=has_speech)
                    for _ in range(5):
                        text = " ".join(rng.choice(words) for _ in range(rng.randint(1, 8))).strip()
                        image = [rng.randrange(8192) for _ in range(1024)] if has_image else None
                        speech = [rng.randrange(4096) for _ in range(rng.randint(1, 30))] if has_speech else None
                        kw = {("response" if task.text == "response" else "input_text"): text}
                        try:
                            want = render_task(name, tok.encode, image_codes=image, speech_codes=speech,
                                               instruction=instruction, **kw)
                        except TemplateError:
                            assert plan is None
                            refused += 1
                            continue
                        assert plan is not None and plan.render(tok.encode(text), image, speech) == want
                        with pytest.raises(ValueError):   # no tokens: Render uses the renderer for that row
                            plan.render([], image, speech)
                        compared += 1
    assert compared >= 5 * 3 * 5 and refused > 0


def test_encode_batch_equals_encode(tok):
    texts = ["a cat", "", " GPT:", "USER: a cat sat on the mat. " * 20, "\u00e9t\u00e9 \u4e2d\u6587 \U0001F600"]
    assert tok.encode_batch(texts) == [tok.encode(t) for t in texts]
