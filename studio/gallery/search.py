"""Full-text search over the gallery's prompts, negative prompts and text outputs, on both
databases (both made by migration 0001_gallery.sql): SQLite's FTS5 table `items_fts` and, on
PostgreSQL, a GIN index over `to_tsvector('simple', studio_search_text(...))`.

Both find the same items for the same words (tests/test_postgres_search.py): every word of the
search must begin a word of the item, case and common Latin accents ignored, and any run of
characters that are not letters or digits separates words — FTS5's unicode61 tokenizer with
remove_diacritics 2, which `studio_search_text` reproduces in SQL for PostgreSQL.
"""
from __future__ import annotations

from sqlalchemy import ColumnElement, func, literal_column, select, text

from studio.gallery.models import Item

# The accents folded on PostgreSQL: lower-case letters of Latin-1 and Latin Extended-A whose
# compatibility decomposition is an ASCII letter plus combining marks. Must equal the translate()
# table of studio_search_text in 0001_gallery.sql (a test checks).
ACCENTED = "àáâãäåçèéêëìíîïñòóôõöùúûüýÿāăąćĉċčďēĕėęěĝğġģĥĩīĭįĵķĺļľńņňōŏőŕŗřśŝşšţťũūŭůűųŵŷźżž"
PLAIN = "aaaaaaceeeeiiiinooooouuuuyyaaaccccdeeeeegggghiiiijklllnnnooorrrssssttuuuuuuwyzzz"
_FOLD = str.maketrans(ACCENTED, PLAIN)


def words(search: str) -> list[str]:
    """The user's words: runs of letters and digits; nothing of a query syntax gets through."""
    return "".join(c if c.isalnum() else " " for c in search).split()


def fts_query(search: str) -> str:
    """User words to an FTS5 query: every word must match, as a prefix."""
    return " ".join(f'"{w}"*' for w in words(search))


def tsquery(search: str) -> str:
    """User words to a PostgreSQL tsquery: every word, lower case and unaccented like the indexed
    text, as a prefix (`cafe:* & red:*`)."""
    folded = [w.lower().translate(_FOLD) for w in words(search)]
    return " & ".join(f"{w}:*" for w in folded if w)


def match_condition(dialect: str, search: str) -> ColumnElement[bool] | None:
    """A WHERE condition on `items` for `search`, or None when it has no word at all."""
    if not words(search):
        return None
    if dialect == "sqlite":
        return Item.id.in_(select(text("rowid")).select_from(text("items_fts"))
                           .where(text("items_fts MATCH :match")).params(match=fts_query(search)))
    if dialect == "postgresql":
        # The very expression of the index ix_items_search, so that the planner uses it.
        document = func.to_tsvector(literal_column("'simple'::regconfig"), func.studio_search_text(
            Item.prompt, Item.negative_prompt, Item.text))
        query = func.to_tsquery(literal_column("'simple'::regconfig"), tsquery(search))
        return document.op("@@")(query)
    raise ValueError(f"gallery search is not available on {dialect!r} databases")

