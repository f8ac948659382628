"""Context assembly: near-duplicates out, chunks packed in rank order within the budget,
merged per document in document order, numbered stably."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from semsearch.core.context import (
    SOURCE_OVERHEAD_TOKENS,
    Passage,
    cut_to_tokens,
    drop_near_duplicates,
    merge_in_order,
    pack,
    truncate_top_k,
)


def words(text: str) -> int:
    """A stand-in token count: one per word."""
    return len(text.split())


DOC = ("Vitamin D is made in the skin under sunlight. It helps the gut absorb calcium. "
       "Low levels are linked to weaker bones. Trials of supplements report mixed results "
       "on fractures.")


def chunk(doc_id: str, ordinal: int, start: int, end: int, text: str = DOC,
          title: str = "") -> Passage:
    return Passage(doc_id, f"{doc_id}#{ordinal}", ordinal, start, end, text[start:end], title)


def test_near_duplicates_keep_the_better_ranked_copy() -> None:
    a = Passage("a", "a#0", 0, 0, 10, "The cat sat on the mat and looked at the dog today.")
    b = Passage("b", "b#0", 0, 0, 10, "The cat sat on the mat and looked at the dog today!")
    c = Passage("c", "c#0", 0, 0, 10, "Completely different words about solar panels here.")
    d = Passage("d", "d#0", 0, 0, 10, "Prefix. The cat sat on the mat and looked at the dog "
                "today. And a little more text after it, repeating nothing at all.")
    kept, dropped = drop_near_duplicates([a, b, c, d])
    assert [p.doc_id for p in kept] == ["a", "c", "d"] and dropped == 1
    packed = pack([a, b, c], budget=1000, count=words)
    assert [s.doc_id for s in packed.sources] == ["a", "c"] and packed.near_duplicates == 1


def test_chunks_of_a_document_merge_in_document_order_without_repeating_overlap() -> None:
    first = chunk("d", 0, 0, 80)
    second = chunk("d", 1, 60, 140)  # overlaps the first by 20 characters
    third = chunk("d", 3, 160, len(DOC))  # a gap before it
    text, spans = merge_in_order([third, second, first])  # ranked out of order
    assert spans == ((0, 140), (160, len(DOC)))
    assert text == DOC[0:140] + " ... " + DOC[160:]
    packed = pack([third, Passage("x", "x#0", 0, 0, 5, "other words"), first, second],
                  budget=1000, count=words)
    assert [s.doc_id for s in packed.sources] == ["d", "x"]  # numbered by best rank
    d = packed.sources[0]
    assert d.number == 1 and d.chunk_ids == ("d#0", "d#1", "d#3")
    assert d.spans == ((0, 140), (160, len(DOC)))


def test_packing_respects_the_budget_and_skips_what_does_not_fit() -> None:
    big = Passage("big", "big#0", 0, 0, 0, " ".join(f"b{i}" for i in range(50)))
    small = Passage("small", "small#0", 0, 0, 0, "tiny text")
    top = Passage("top", "top#0", 0, 0, 0, " ".join(f"t{i}" for i in range(10)))
    budget = 10 + 2 + 2 * SOURCE_OVERHEAD_TOKENS
    packed = pack([top, big, small], budget=budget, count=words)
    assert [s.doc_id for s in packed.sources] == ["top", "small"]
    assert packed.over_budget == 1 and packed.used <= budget and not packed.truncated
    assert packed.budget_dict()["used_tokens"] == packed.used


def test_a_best_chunk_over_the_whole_budget_is_cut_not_dropped() -> None:
    long = Passage("long", "long#0", 0, 100, 100 + 200 * 6, "alpha " * 200)
    packed = pack([long], budget=SOURCE_OVERHEAD_TOKENS + 30, count=words)
    (only,) = packed.sources
    assert packed.truncated and words(only.text) == 30
    assert only.spans == ((100, 100 + len(only.text)),)


def test_numbers_are_stable_for_the_same_ranking() -> None:
    other = "Solar panels turn light into current through the photovoltaic effect in cells."
    ranked = [chunk("b", 0, 0, 60), chunk("a", 0, 0, 60, other), chunk("b", 1, 70, 120)]
    one = pack(ranked, 1000, words)
    two = pack(list(ranked), 1000, words)
    assert [(s.number, s.doc_id, s.chunk_ids) for s in one.sources] == \
        [(s.number, s.doc_id, s.chunk_ids) for s in two.sources] == \
        [(1, "b", ("b#0", "b#1")), (2, "a", ("a#0",))]


def test_max_chunks_limits_what_is_packed() -> None:
    ranked = [Passage(f"d{i}", f"d{i}#0", 0, 0, 0, f"text number {i} here") for i in range(10)]
    assert len(pack(ranked, 10_000, words, max_chunks=3).sources) == 3


def test_baseline_truncation_cuts_the_last_chunk_at_the_budget() -> None:
    ranked = [Passage(f"d{i}", f"d{i}#0", 0, 0, 0, " ".join(f"w{i}x{j}" for j in range(40)))
              for i in range(5)]
    base = truncate_top_k(ranked, budget=2 * SOURCE_OVERHEAD_TOKENS + 60, count=words)
    assert [words(s.text) for s in base.sources] == [40, 20]


@given(st.lists(st.text(alphabet="ab c.", max_size=30), min_size=1, max_size=12),
       st.integers(min_value=0, max_value=200))
def test_packed_context_never_exceeds_its_budget(texts: list[str], budget: int) -> None:
    ranked = [Passage(f"d{i % 4}", f"d{i % 4}#{i}", i, 10 * i, 10 * i + len(t), t)
              for i, t in enumerate(texts)]
    packed = pack(ranked, budget, words)
    assert packed.used <= budget
    assert sum(words(s.text) for s in packed.sources) <= budget
    assert [s.number for s in packed.sources] == list(range(1, len(packed.sources) + 1))


def test_cut_to_tokens_cuts_at_a_word_boundary() -> None:
    assert cut_to_tokens("one two three four", 2, words) == "one two"
    assert cut_to_tokens("one two", 0, words) == ""


def test_spread_puts_each_documents_best_chunk_before_any_second() -> None:
    a0 = Passage("a", "a#0", 0, 0, 30, " ".join(f"a{i}" for i in range(20)))
    a1 = Passage("a", "a#1", 1, 40, 70, " ".join(f"aa{i}" for i in range(20)))
    b0 = Passage("b", "b#0", 0, 0, 30, " ".join(f"b{i}" for i in range(20)))
    budget = 2 * (20 + SOURCE_OVERHEAD_TOKENS)
    spread = pack([a0, a1, b0], budget, words, fill=False)
    assert [s.doc_id for s in spread.sources] == ["a", "b"]
    plain = pack([a0, a1, b0], budget, words, spread=False, fill=False)
    assert [(s.doc_id, s.chunk_ids) for s in plain.sources] == [("a", ("a#0", "a#1"))]


def test_fill_uses_the_room_left_with_whole_sentences() -> None:
    top = Passage("top", "top#0", 0, 0, 0, " ".join(f"t{i}" for i in range(20)))
    sentences = [" ".join(f"s{j}w{i}" for i in range(15)) + "." for j in range(3)]
    text = " ".join(sentences)
    nxt = Passage("next", "next#0", 0, 100, 100 + len(text), text)
    budget = 20 + 2 * SOURCE_OVERHEAD_TOKENS + 35  # room for two of its three sentences
    packed = pack([top, nxt], budget, words)
    assert packed.truncated and packed.used <= budget
    cut = packed.sources[1]
    assert cut.text == " ".join(sentences[:2])
    assert cut.spans == ((100, 100 + len(cut.text)),)
    assert pack([top, nxt], budget, words, fill=False).sources[1:] == []
    # Less room than is worth filling: nothing is squeezed in.
    assert len(pack([top, nxt], 20 + 2 * SOURCE_OVERHEAD_TOKENS + 20, words).sources) == 1
