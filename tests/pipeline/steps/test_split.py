"""filters.split_long: paragraphs (issue 15 item 7): a long text_to_text document becomes several rows of at most
max_tokens, cut at paragraph boundaries, ids <key>#k, the cut in meta and counted, accounting reconciled; the default
(drop) keeps the paper's rule: the document is rejected too_long."""
from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from aromni.layout import AR_OMNI_V0_1
from aromni.pipeline.readers import READERS
from aromni.pipeline.unit import process_unit
from aromni.recipe import parse_recipe

WORDS = "the river ran past the old mill and the miller watched the water turn the wheel all day long".split()


def paragraph(i: int, n: int) -> str:
    return " ".join(WORDS[(i + j) % len(WORDS)] for j in range(n)) + "."


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    from aromni.model.text import write_chameleon_style_bpe
    root = tmp_path_factory.mktemp("split")
    d = root / "ufw" / "data" / "ultrafineweb_en"
    d.mkdir(parents=True)
    long_doc = "\n\n".join(paragraph(i, 12 + 3 * (i % 4)) for i in range(9))
    one_para = " ".join(paragraph(i, 20) for i in range(6))  # long, but no paragraph break: cannot be split
    pq.write_table(pa.Table.from_pylist([{"content": long_doc}, {"content": "a short one."},
                                         {"content": one_para}]), d / "part-00000.parquet")
    write_chameleon_style_bpe([long_doc, one_para], root / "tok.json", vocab_size=300)
    return root, long_doc


def run(root, split_long):
    from aromni.model import load_tokenizers
    recipe = parse_recipe({"name": "s", "data_root": str(root),
                           "tokenizers": {"text": {"path": str(root / "tok.json"), "stand_in": True}},
                           "sources": [{"name": "ufw", "reader": "ultrafineweb", "path": "ufw/data/ultrafineweb_en",
                                        "tasks": ["text_to_text"]}],
                           "filters": {"max_tokens": 60, "split_long": split_long},
                           "mixing": {"ratio": {"text": 1}}})
    tok = load_tokenizers(recipe.tokenizers)
    s = recipe.sources[0]
    (u,) = READERS[s.reader](s.name, recipe.resolve(s.path), s.options).units()
    return recipe, process_unit(recipe, s, u, tok)


def test_default_drops_long_documents(corpus):
    _, r = run(corpus[0], "drop")
    assert r.stats.read == 3 and r.stats.written == 1 and r.stats.rejected == {"too_long": 2}
    assert "split_long" not in r.stats.steps


def test_paragraphs_split_into_rows_within_max_tokens(corpus):
    root, long_doc = corpus
    recipe, r = run(root, "paragraphs")
    key = r.rows[0].id.split("#")[0]
    pieces = [row for row in r.rows if "#" in row.id]
    assert len(pieces) >= 3
    assert [row.id for row in pieces] == [f"{key}#{k}" for k in range(len(pieces))]
    assert all(row.n_tokens <= recipe.filters.max_tokens for row in pieces)
    assert all(row.meta["split"] == {"from": key, "part": k, "parts": len(pieces)} for k, row in enumerate(pieces))
    # the pieces are the document, cut only at paragraph breaks
    from aromni.model import load_tokenizers
    dec = load_tokenizers(recipe.tokenizers).text.decode
    specials = {AR_OMNI_V0_1.bos, AR_OMNI_V0_1.eos}
    texts = [dec([i for i in row.input_ids if i not in specials]) for row in pieces]
    assert "\n\n".join(t.strip() for t in texts).split() == long_doc.split()
    # accounting: 3 documents read, the split adds its extra rows; the one-paragraph document is still too_long
    st = r.stats.steps["split_long"]
    assert st == {"documents": 1, "extra_rows": len(pieces) - 1, "unsplittable": 1}
    assert r.stats.read == 3 + st["extra_rows"] == r.stats.written + sum(r.stats.rejected.values())
    assert r.stats.rejected == {"too_long": 1} and r.stats.written == len(pieces) + 1

