"""A tiny corpus with planted near-duplicates, shared by the similar, dedupe and recommend
tests (services, API, CLI): exact copies, copies with a few words changed (one of them a
document of several chunks), and distinct documents on the same topics that must stay apart.
Cosines below are the real model's (all-MiniLM-L6-v2), measured when the tests were written."""

from __future__ import annotations

from semsearch.core.types import Document

STARTER = "Feed your sourdough starter with equal weights of flour and water every day."
OVEN = "Bake sourdough bread in a preheated Dutch oven at 250 degrees."
NEWS = ("The city council approved a new budget for public transport on Monday. It adds "
        "twelve bus lines, extends the tram to the airport and lowers fares for students. "
        "Critics said the plan ignores cyclists and the maintenance backlog of the old "
        "bridges. The mayor answered that a separate plan for bicycles will follow in the "
        "spring. ") * 6  # several chunks

DOCS = [
    Document("starter", STARTER, metadata={"topic": "baking"}),
    Document("starter-copy", STARTER, metadata={"topic": "baking"}),  # exact copy
    Document("starter-each", STARTER.replace("every day", "each day"),  # ~0.99
             metadata={"topic": "baking"}),
    Document("oven", OVEN, metadata={"topic": "baking"}),
    Document("oven-230", OVEN.replace("250", "230"), metadata={"topic": "baking"}),  # ~0.97
    Document("flour", "Rye and whole wheat flour make a sourdough starter more active.",
             metadata={"topic": "baking"}),  # ~0.70 to the starter: related, not a copy
    Document("engine", "Car maintenance: change the engine oil of your car every ten "
             "thousand kilometres.",
             metadata={"topic": "cars"}),
    Document("tyres", "Car maintenance: check the tyre pressure of your car every month.",
             metadata={"topic": "cars"}),
    Document("brakes", "Car maintenance: replace the worn brake pads of your car when "
             "they squeal.",
             metadata={"topic": "cars"}),
    Document("news", NEWS, metadata={"topic": "city"}),
    Document("news-edit", NEWS.replace("twelve", "eleven").replace("Monday", "Tuesday"),
             metadata={"topic": "city"}),
    Document("stadium", "The council rejected the stadium project after a long debate "
             "about its cost.", metadata={"topic": "city"}),
]

CLUSTERS = [{"news", "news-edit"}, {"oven", "oven-230"},
            {"starter", "starter-copy", "starter-each"}]
DISTINCT = {"flour", "engine", "tyres", "brakes", "stadium"}
