import gzip

import pytest

from gensr.data.text import analyze, category_query
from helpers import shared_path

KINDLE_CASES = {
    ("Kindle Store", "Kindle eBooks", "Mystery, Thriller & Suspense"):
        "store kindle ebook mystery thriller suspense",
    ("Books", "Literature & Fiction"): "books literature fiction",
    ("Kindle Store", "Kindle eBooks", "Romance", "Paranormal", "Werewolves & Shifters"):
        "store kindle ebook romance paranormal werewolve shift",
    ("Kindle Store", "Kindle eBooks", "Children's eBooks", "Animals", "Mammals"):
        "store kindle children ebook animal mammal",
}


@pytest.mark.parametrize("path,expected", KINDLE_CASES.items())
def test_ai2017_queries_match_hand_examples(path, expected):
    assert category_query(path) == expected


def test_generated_queries_exist_in_real_kindle_query_file():
    folder = shared_path("amazon-kindle-ai2017-queries")
    with gzip.open(folder / "kindle_query_text.txt.gz", "rt") as fh:
        real = {line.strip() for line in fh}
    for path, expected in KINDLE_CASES.items():
        assert category_query(path) in real, expected


def test_vocabulary_filter_and_dedup_keeps_last():
    assert category_query(["a b", "Garden Tools", "Tools"], vocabulary={"garden", "tool"}) == (
        "garden tool")
    assert category_query(["Tools", "Garden", "Tools"]) == "garden tool"


def test_analyze_keeps_numbers_and_stems():
    assert analyze("The 3D Printers and w20 Filaments") == ["3d", "printer", "w20", "filament"]
