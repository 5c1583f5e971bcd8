"""Text fusion on the real Office catalog and on hand-made Amazon-style fields."""
from pathlib import Path

from indexing.dataset import load_dataset
from indexing.text import clean, fuse_catalog, fuse_item, truncate

ROOT = Path(__file__).resolve().parents[2]
FIELDS = ["title", "brand", "categories", "description", "reviews"]


def test_clean_strips_html_entities_and_controls():
    assert clean("  <b>Big&amp;amp;Tall</b>\n\tpen&nbsp;set\x00 ") == "Big&Tall pen\xa0set".replace("\xa0", " ")
    assert clean("<p>a</p><br/>b") == "a b"


def test_truncate_cuts_at_word_boundary():
    assert truncate("alpha beta gamma", 100) == "alpha beta gamma"
    assert truncate("alpha beta gamma", 12) == "alpha beta"
    assert len(truncate("x" * 50, 10)) == 10


def test_fuse_item_flattens_categories_and_reviews():
    fields = {
        "title": "Stapler",
        "categories": [["Office Products", "Office & School Supplies", "Staplers"], ["Office Products"]],
        "reviews": ["Works <i>great</i>.", {"reviewText": "Jams sometimes"}, "", "ok", "fourth"],
        "brand": "",
    }
    text = fuse_item(fields, FIELDS, 1000)
    assert text == ("Title: Stapler. Categories: Office Products > Office & School Supplies > Staplers, "
                    "Office Products. Reviews: Works great. | Jams sometimes | ok.")


def test_office_catalog_fusion():
    ds = load_dataset(ROOT / "data/office", "Office")
    fused = fuse_catalog(ds.items, ds.num_items, FIELDS, 300)
    assert len(fused.texts) == 2420 and fused.empty_items == [] and fused.untitled_items == []
    assert fused.field_counts["title"] == 2420 and fused.field_counts["categories"] == 0
    assert all(0 < len(t) <= 300 for t in fused.texts)
    assert fused.texts[1].startswith("Title: Texas Instruments TI-1795 SV Standard Function Calculator. "
                                     "Brand: Texas Instruments. Description: The classic")


def test_items_without_text_fall_back_and_are_counted():
    items = {0: {"title": "Pen"}, 1: {"brand": "Acme", "description": "<br>"}, 2: {}}
    fused = fuse_catalog(items, 4, FIELDS, 100)  # item 3 is absent from the item file
    assert fused.texts == ["Title: Pen.", "Brand: Acme.", "Item 2.", "Item 3."]
    assert fused.untitled_items == [1] and fused.empty_items == [2, 3]
