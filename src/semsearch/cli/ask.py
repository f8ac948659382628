"""``semsearch ask``: an answer with numbered sources. The answer streams to stdout as the
model writes it (already checked: no citation to a missing source); sources and the
summary follow. ``--json`` prints one object instead."""

from __future__ import annotations

import click

from semsearch.cli.common import _echo_json, _engine

MODES = ("hybrid", "dense", "keyword")


@click.command()
@click.argument("question")
@click.option("--collection", "-c", required=True)
@click.option("--k", "-k", type=int, default=None,
              help="chunks to pack at most [default: SEMSEARCH_ASK_K, 8]")
@click.option("--max-context-tokens", type=int, default=None,
              help="tokens of sources in the prompt at most [default: "
                   "SEMSEARCH_ASK_CONTEXT_TOKENS, 2000; less if the window is smaller]")
@click.option("--mode", "-m", type=click.Choice(MODES), default="hybrid", show_default=True,
              help="how sources are retrieved")
@click.option("--filter", "-f", "filters", multiple=True,
              help='metadata filter: key=value or JSON like \'{"year": {"gte": 2010}}\'')
@click.option("--json", "as_json", is_flag=True,
              help="print answer, citations, sources, model, usage, cost, budget, timings")
def ask(question: str, collection: str, k: int | None, max_context_tokens: int | None,
        mode: str, filters: tuple[str, ...], as_json: bool) -> None:
    """Answer QUESTION from a collection's documents, citing them as [n].

    With SEMSEARCH_LLM=openai-compatible (and SEMSEARCH_LLM_BASE_URL, SEMSEARCH_LLM_MODEL,
    SEMSEARCH_LLM_API_KEY) a model writes the answer; without, the answer is extractive:
    the source sentences closest to the question, each with its source."""
    from semsearch.core.filters import parse_cli_filters
    from semsearch.core.types import Mode
    from semsearch.services.ask import AskRequest, AskResult, ask_stream

    req = AskRequest(question=question, collection=collection, k=k,
                     max_context_tokens=max_context_tokens, mode=Mode(mode),
                     filter=parse_cli_filters(list(filters)))
    result: AskResult | None = None
    with _engine() as engine:
        streamed = False
        for kind, value in ask_stream(engine, req):
            if kind == "done":
                assert isinstance(value, AskResult)
                result = value
            elif not as_json and engine.llm is not None:
                click.echo(value, nl=False)
                streamed = True
    assert result is not None
    if as_json:
        _echo_json(result.to_dict())
        return
    if result.kind == "extractive":
        click.echo("Extractive answer (no LLM configured: the source sentences closest to "
                   "the question):")
        click.echo(result.answer)
    elif streamed:
        click.echo()
    else:
        click.echo(result.answer)
    _print_sources(result)


def _print_sources(result: object) -> None:
    from semsearch.services.ask import AskResult

    assert isinstance(result, AskResult)
    if result.sources:
        click.echo("\nSources:")
    cited = set(result.cited)
    for s in result.sources:
        spans = ", ".join(f"{a}-{b}" for a, b in s.spans)
        mark = "*" if s.number in cited else " "
        click.echo(f"{mark}[{s.number}] {s.doc_id}" + (f"  {s.title}" if s.title else "")
                   + f"  (characters {spans})")
    u = result.usage
    t = result.timings
    model = result.model.get("served_model") or result.model.get("model", "")
    notes = [f"{result.kind} by {result.model.get('provider')} {model}".rstrip(),
             f"{u.prompt_tokens}+{u.completion_tokens} tokens"
             + (" (estimated)" if u.estimated else ""),
             f"${result.cost_usd:.6f}",
             f"context {result.budget.get('used_tokens', 0)}/"
             f"{result.budget.get('context_tokens', 0)} tokens",
             f"retrieve {t['retrieve'] * 1000:.0f} ms, generate {t['generate'] * 1000:.0f} ms"]
    if result.invalid_citations:
        notes.append(f"{len(result.invalid_citations)} citation(s) to no source removed")
    if result.withheld:
        notes.append(f"{result.withheld} recital(s) of the instructions withheld")
    click.echo("(" + "; ".join(notes) + ")", err=True)
