"""Item metadata files: movies.dat, MovieLens movies.csv and plain CSV read to records."""

from __future__ import annotations

from pathlib import Path

import pytest

from evaluation.data import load_item_content, sibling_item_file
from stream.item_metadata import ItemRecord, read_items


def test_movies_dat_gives_ids_without_padding_years_and_genres(tmp_path: Path) -> None:
    path = tmp_path / "movies.dat"
    path.write_text("0002844::Fantômas (1913)::Crime|Drama\n"
                    "0004936::The Bank (1915)::\n"
                    "broken line\n"
                    "\n"
                    "tt01::Untitled::Comedy|Comedy\n", encoding="utf-8")
    records, stats = read_items(path)
    assert records == [ItemRecord("2844", 1913, ("Crime", "Drama")),
                       ItemRecord("4936", 1915, ()), ItemRecord("tt01", None, ("Comedy",))]
    assert stats.events == 3 and stats.rejected == 1 and stats.errors[0][0] == 3


def test_movielens_movies_csv_and_a_plain_csv(tmp_path: Path) -> None:
    ml = tmp_path / "movies.csv"
    ml.write_text('movieId,title,genres\n1,"Toy Story (1995)",Animation|Children\n'
                  "2,Heat (1995),(no genres listed)\n,No id (2000),Drama\n", encoding="utf-8")
    records, stats = read_items(ml)
    assert records == [ItemRecord("1", 1995, ("Animation", "Children")),
                       ItemRecord("2", 1995, ())]
    assert stats.rejected == 1
    plain = tmp_path / "items.csv"
    plain.write_text("item_id,year,tags\nsku-1,2021,shoes|red\nsku-1,1800x,shoes\n"
                     "007,1999,x\n", encoding="utf-8")
    assert read_items(plain)[0] == [ItemRecord("sku-1", None, ("shoes",)),  # last one wins
                                    ItemRecord("007", 1999, ("x",))]        # ids as written
    bad = tmp_path / "bad.csv"
    bad.write_text("id,name\n1,x\n", encoding="utf-8")
    with pytest.raises(ValueError, match="item_id"):
        read_items(bad)


def test_content_aligns_with_the_ratings_item_indices(tmp_path: Path) -> None:
    path = tmp_path / "movies.dat"
    path.write_text("0000007::A (2001)::Drama\n0000009::B (1999)::Comedy|Drama\n",
                    encoding="utf-8")
    content = load_item_content(path, ["9", "404", "7"])
    assert content.vocabulary == ("Comedy", "Drama")
    assert content.tag_weights.toarray().tolist() == [[0.5, 0.5], [0.0, 0.0], [0.0, 1.0]]
    assert content.years[[0, 2]].tolist() == [1999.0, 2001.0]
    with pytest.raises(ValueError, match="no item of"):
        load_item_content(path, ["x", "y"])


def test_movielens_100k_u_item_flags(tmp_path: Path) -> None:
    flags = ["0"] * 19
    flags[3], flags[5] = "1", "1"                          # Animation, Comedy
    path = tmp_path / "u.item"
    path.write_text("|".join(["1", "Toy Story (1995)", "01-Jan-1995", "",
                              "http://us.imdb.com/M/title-exact?Toy%20Story%20(1995)", *flags])
                    + "\n" + "|".join(["2", "unknown", "", "", "", "1"] + ["0"] * 18) + "\n",
                    encoding="latin-1")
    records, stats = read_items(path)
    assert records == [ItemRecord("1", 1995, ("Animation", "Comedy")),
                       ItemRecord("2", None, ())]
    assert stats.rejected == 0
    (tmp_path / "u.data").write_text("1\t1\t5\t881250949\n")
    assert sibling_item_file(tmp_path / "u.data") == path
