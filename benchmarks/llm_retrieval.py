"""Retrieval for documents in chat: on a fixed set of documents with known answers, is the
passage holding the answer among the passages the studio puts in the prompt and cites?
(engines/llm/documents.py with the embedded all-MiniLM-L6-v2.) Target >= 90 %. Also passages
embedded per second.

    OMP_WAIT_POLICY=PASSIVE .venv/bin/python benchmarks/llm_retrieval.py [--k 4] [--json out.json]

The questions are worded differently from the passages (no copied sentences), and every
document has several passages, so a hit is not luck: with k=4 of 18 passages, chance is ~22 %.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
REPO = Path(__file__).resolve().parent.parent
sys.path[:] = [str(REPO)] + [p for p in sys.path if Path(p or ".").resolve() != REPO / "benchmarks"]

DOCUMENTS = {
    "handbook.md": """# Staff handbook

## Working hours
The office opens at 8:30 and closes at 18:00. Core hours, when everyone is expected to be
reachable, run from 10:00 to 15:00. Fridays end at 16:00 in July and August.

## Holidays
Every employee has 27 days of paid leave a year, plus public holidays. Up to five unused days
may be carried into the first quarter of the next year; the rest lapse on 31 December.

## Expenses
Claims are filed in the finance portal within 30 days of the purchase, with a photo of the
receipt. Train travel is second class unless the journey is longer than four hours.

## Equipment
New starters receive a laptop and a headset on their first morning. Lost equipment must be
reported to the IT desk within 24 hours so that it can be locked remotely.
""",
    "kettle-manual.txt": """Aurora electric kettle, model K-200: user manual

Filling. Fill between the MIN mark (0.5 litre) and the MAX mark (1.7 litres). Never switch the
kettle on when it is empty: a thermal fuse cuts the power and must then cool for ten minutes.

Keep-warm mode. Press the thermometer button twice to hold the water at 80 degrees for up to
thirty minutes; the ring light turns amber while the mode is on.

Descaling. In hard-water areas descale every four weeks: boil a mixture of half water and half
white vinegar, leave it overnight, then rinse three times with clean water.

Warranty. The kettle is guaranteed for two years from the date of purchase. Keep the receipt;
damage caused by limescale is not covered.
""",
    "recipes.html": """<html><head><title>Recipes</title><style>body{font:serif}</style></head><body>
<h1>Family recipes</h1>
<h2>Lentil soup</h2>
<p>Soften one onion and two carrots in olive oil, add 250 g of red lentils, a litre of stock and
a teaspoon of cumin, and simmer for 25 minutes. Blend half of it for a thicker soup.</p>
<h2>Apple crumble</h2>
<p>Slice six apples into a dish. Rub 150 g of flour with 100 g of cold butter, stir in 75 g of
sugar, scatter it over the fruit and bake at 190 degrees for 35 minutes.</p>
<h2>Flatbread</h2>
<p>Mix 300 g of flour with a pinch of salt, 180 ml of warm water and a spoon of oil. Rest the
dough for 20 minutes, roll it thin and cook each round in a dry pan for a minute a side.</p>
</body></html>""",
    "release-notes.md": """# Release notes

## Version 4.2
The export dialog can now write CSV with a semicolon separator. Dark mode follows the system
setting. Fixed a crash when a project name contained an emoji.

## Version 4.1
Projects can be archived instead of deleted; archived projects are hidden from the sidebar and
can be restored for 90 days. Search got faster on large workspaces.

## Version 4.0
The minimum supported macOS is now 13. Plugins must be signed; unsigned plugins are disabled
at start-up with a notice. The old XML project format is read but no longer written.
""",
    "garden.txt": """Notes on the allotment

Tomatoes. Sow indoors in March, plant out after the last frost in mid-May, and pinch out the side
shoots every week. Feed with a high-potash liquid once the first truss has set.

Potatoes. Chit the seed potatoes in February on a cool windowsill. Earth them up when the shoots
reach 20 centimetres to keep the tubers out of the light, which turns them green.

Slugs. Beer traps sunk level with the soil work best after rain. Copper tape around the raised
beds keeps them off the lettuce.

Watering. Water early in the morning at the base of the plants; wet leaves in the evening invite
blight.
""",
    "geometry.py": '''"""Small geometry helpers used by the floor-plan tool."""
import math


def polygon_area(points):
    """Area of a simple polygon by the shoelace formula; points in order, any direction."""
    total = 0.0
    for (x1, y1), (x2, y2) in zip(points, points[1:] + points[:1]):
        total += x1 * y2 - x2 * y1
    return abs(total) / 2


def distance(a, b):
    """Straight-line distance between two points."""
    return math.hypot(b[0] - a[0], b[1] - a[1])


def snap(value, grid=0.05):
    """Round a coordinate to the drawing grid (5 cm by default)."""
    return round(value / grid) * grid
''',
}

# (question, file that answers it, words the answering passage must contain)
QUESTIONS = [
    ("When do I have to be reachable at work?", "handbook.md", "Core hours"),
    ("How many days of vacation do staff get?", "handbook.md", "27 days"),
    ("Can leftover leave days move to next year?", "handbook.md", "carried"),
    ("What is the deadline for submitting an expense claim?", "handbook.md", "30 days"),
    ("When may I travel first class by train?", "handbook.md", "four hours"),
    ("What should I do if my laptop goes missing?", "handbook.md", "IT desk"),
    ("What is the largest amount of water the kettle holds?", "kettle-manual.txt", "1.7"),
    ("What happens if the kettle is switched on dry?", "kettle-manual.txt", "thermal fuse"),
    ("How do I keep the water hot?", "kettle-manual.txt", "80 degrees"),
    ("How should the kettle be cleaned of limescale?", "kettle-manual.txt", "vinegar"),
    ("How long is the kettle under guarantee?", "kettle-manual.txt", "two years"),
    ("How long does the lentil soup cook?", "recipes.html", "25 minutes"),
    ("What oven temperature does the crumble need?", "recipes.html", "190"),
    ("How much water goes into the bread dough?", "recipes.html", "180 ml"),
    ("Which release added semicolon-separated export?", "release-notes.md", "semicolon"),
    ("How long can an archived project be brought back?", "release-notes.md", "90 days"),
    ("What happens to plugins without a signature?", "release-notes.md", "unsigned"),
    ("Which macOS version is required now?", "release-notes.md", "macOS is now 13"),
    ("When should tomato plants go outside?", "garden.txt", "mid-May"),
    ("Why cover potato shoots with soil?", "garden.txt", "green"),
    ("How do I protect lettuce from slugs?", "garden.txt", "Copper"),
    ("What time of day is best for watering?", "garden.txt", "early in the morning"),
    ("How is the area of a polygon computed?", "geometry.py", "shoelace"),
    ("What grid size are coordinates rounded to?", "geometry.py", "5 cm"),
]


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--k", type=int, default=4, help="passages put in the prompt per question")
    parser.add_argument("--size", type=int, default=160, help="passage size in characters (about a paragraph)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)

    from engines.llm.documents import DocumentIndex, chunk_document, extract_text
    from engines.llm.embeddings import EmbeddingEngine

    embedder = EmbeddingEngine()
    embedder.load()
    passages = []
    for name, text in DOCUMENTS.items():
        passages += chunk_document(name, extract_text(name, text.encode()), size=args.size)
    started = time.perf_counter()
    index = DocumentIndex.build(passages, embedder)
    embed_s = time.perf_counter() - started
    hits, misses = 0, []
    for question, source, words in QUESTIONS:
        found = index.search(question, embedder, k=args.k)
        if any(p.source == source and words in p.text for p in found):
            hits += 1
        else:
            misses.append(question)
    results = {"passages": len(passages), "questions": len(QUESTIONS), "k": args.k,
               "hit_rate": round(hits / len(QUESTIONS), 3), "misses": misses,
               "passages_per_s": round(len(passages) / embed_s, 1)}
    print(json.dumps(results, indent=2))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return results


if __name__ == "__main__":
    main()
