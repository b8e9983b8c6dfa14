"""Training corpus and test inputs for scripts/make_tiny_models.py.

Everything here is plain data written by hand (plus a deterministic template expansion),
so the tokenizers trained on it are reproducible. The corpus deliberately contains:
  * varied English (questions, statements, numbers, code-ish snippets),
  * a little French / German / Spanish / Russian / Chinese / Japanese text and emoji,
  * the bare words "yes" and "no" at the start of many lines, so the byte-level BPE learns
    them as single tokens (the Qwen3 reranker scores logit("yes") - logit("no")).
The character "🦀" appears ONLY in the test texts, never in the corpus, so WordPiece and
Unigram tokenizers map it to their unknown token (bge-m3's sparse output must drop it).
"""
from __future__ import annotations

import itertools

HANDWRITTEN = [
    "What is deep learning?",
    "Deep learning is a branch of machine learning that uses neural networks with many layers.",
    "Machine learning models learn patterns from data instead of following fixed rules.",
    "A neural network is made of layers of simple units that pass numbers to each other.",
    "Text embeddings map a piece of text to a fixed-size vector of numbers.",
    "Similar sentences end up close to each other in the embedding space.",
    "Semantic search finds documents by meaning rather than by exact keywords.",
    "A reranker reads a query and a document together and returns a relevance score.",
    "The server tokenizes each sentence, runs the encoder and pools the hidden states.",
    "Mean pooling averages the token vectors, while CLS pooling keeps the first one.",
    "The attention mechanism lets every token look at every other token in the sequence.",
    "Rotary position embeddings rotate the query and key vectors by an angle that grows with position.",
    "A sliding window limits attention to the nearest tokens on each side.",
    "The quick brown fox jumps over the lazy dog.",
    "She sells sea shells by the sea shore.",
    "Paris is the capital and largest city of France.",
    "Berlin is the capital of Germany, and Madrid is the capital of Spain.",
    "The Great Wall of China is visible from many places along its length.",
    "Mount Everest is the highest mountain above sea level.",
    "The river flows through the old town and under seven stone bridges.",
    "How do I bake bread at home?",
    "Mix flour, water, salt and yeast, let the dough rise, then bake it in a hot oven.",
    "The recipe needs two cups of sugar, three eggs and a pinch of salt.",
    "Fresh bread tastes best while it is still warm.",
    "Where is the train station?",
    "The train leaves at seven in the morning and arrives before noon.",
    "Please send me the report by Friday afternoon.",
    "The meeting was moved to Tuesday because of the holiday.",
    "My phone battery died just before the important call.",
    "He walked to the store to buy milk, bread and apples.",
    "The children played football in the park until it got dark.",
    "It rained all day, so we stayed inside and read books.",
    "The museum opens at nine and closes at five.",
    "Our team won the match by two goals.",
    "The weather forecast says it will be sunny tomorrow.",
    "Cats sleep for most of the day and hunt at night.",
    "Dogs are loyal animals and love to play outside.",
    "The old library has thousands of rare books and maps.",
    "A good night of sleep helps the brain store new memories.",
    "Drinking enough water is important for your health.",
    "The doctor said the results of the test were normal.",
    "The movie was long, but the ending was worth the wait.",
    "I think the second option is cheaper and faster.",
    "Can you explain how the search engine ranks the pages?",
    "The price of the ticket is 25 dollars for adults and 10 dollars for children.",
    "Order #4521 shipped on 2024-03-15 for $19.99.",
    "The store is open from 9:00 to 17:30 on weekdays.",
    "In 1969, two astronauts walked on the moon for the first time.",
    "The population of the city grew from 120,000 to 450,000 in thirty years.",
    "Call 555-0199 or write to support@example.com for help.",
    "Version 2.1.3 fixes a bug in the login page.",
    "def add(a, b): return a + b",
    "for i in range(10): print(i * i)",
    "The function returns a list of tokens and their offsets.",
    "SELECT name, price FROM products WHERE price < 100;",
    "Use git commit -m to save your changes with a message.",
    "The error message says the file could not be found.",
    "Restart the service and check the logs again.",
    "The model was trained on a large collection of web pages and books.",
    "Question: is the sky blue? Answer: yes.",
    "Question: is fire cold? Answer: no.",
    "Does the document answer the query? yes",
    "Does the document answer the query? no",
    "Is this passage relevant to the question? yes",
    "Is this passage relevant to the question? no",
    "Judge whether the Document meets the requirements based on the Query and the Instruct provided.",
    "Note that the answer can only be yes or no.",
    "Given a web search query, retrieve relevant passages that answer the query.",
    "Instruct: Given a web search query, retrieve relevant passages that answer the query",
    "search_query: what is the capital of france",
    "search_document: Paris is the capital of France.",
    "task: search result | query: how to learn a language",
    "title: none | text: Practice every day and speak with native speakers.",
    "Crème brûlée is a rich custard dessert with a layer of hard caramel.",
    "Le café est chaud et le croissant est frais.",
    "Où est la gare? La gare est près du centre-ville.",
    "Der schnelle braune Fuchs springt über den faulen Hund.",
    "Die Straße ist nass, weil es gestern geregnet hat.",
    "¿Dónde está la estación? La estación de tren está cerca del centro.",
    "El niño come una manzana y bebe agua fría.",
    "Москва — столица России, а Киев — столица Украины.",
    "Я люблю читать книги по вечерам.",
    "深度学习是机器学习的一个分支。",
    "我喜欢吃饺子和面条。",
    "北京是中国的首都。",
    "東京は日本の首都です。",
    "今日はとても良い天気ですね。",
    "I love pizza 🍕 and ice cream 🍦!",
    "Great job 👍 see you soon 😊",
    "The café on the corner serves naïve tourists a crêpe with jalapeño sauce.",
    "Zürich, Genève and Bern are cities in Switzerland.",
    "The temperature dropped to −5 °C last night.",
    "He paid €30 for the book and £12 for the map.",
    "Answer with yes or no only.",
    "The library closes early on Sundays, so plan your visit in the morning.",
    "Vectors are compared with cosine similarity, which measures the angle between them.",
    "Sparse retrieval assigns a weight to each word in the vocabulary.",
    "Late interaction compares every query token with every document token.",
    "The cross encoder is slower than the bi-encoder but usually more accurate.",
    "Long documents are split into passages of a few hundred words.",
    "The tokenizer splits rare words into smaller pieces.",
]

YES_NO_LINES = [
    "yes", "no", "yes.", "no.", "yes, it does.", "no, it does not.", "yes, that is right.",
    "no, that is wrong.", "yes please", "no thanks", "yes I agree", "no I disagree",
    "yes\nno", "no\nyes",
]

SUBJECTS = [
    "The teacher", "A young student", "My neighbor", "The engineer", "Our manager", "The little girl",
    "An old farmer", "The pilot", "A tired doctor", "The chef", "The police officer", "A famous singer",
]
VERBS = [
    "reads", "writes", "finds", "builds", "cleans", "paints", "sells", "opens", "closes", "checks",
    "explains", "carries",
]
OBJECTS = [
    "a long letter", "the broken window", "a small wooden box", "the new computer", "a map of the city",
    "the red car", "a cup of green tea", "the last train ticket", "a bag of oranges", "the garden gate",
    "a short story", "the weekly report",
]
PLACES = [
    "in the kitchen", "at the office", "near the river", "after lunch", "before the storm",
    "every morning", "on the weekend", "during the summer", "at the market", "in the small village",
]
QUESTIONS = [
    "what is {}?", "how does {} work?", "why is {} important?", "where can I learn about {}?",
    "who invented {}?", "when was {} first used?",
]
TOPICS = [
    "photosynthesis", "the internet", "a vaccine", "climate change", "the stock market", "gravity",
    "a black hole", "electricity", "the printing press", "a search engine", "a database", "music theory",
    "the human heart", "solar energy", "a programming language", "the roman empire",
]


def corpus() -> list[str]:
    """Deterministic list of training lines (~400)."""
    out = list(HANDWRITTEN)
    out += YES_NO_LINES * 6
    # template sentences: a fixed, strided walk through the combinations
    combos = list(itertools.product(SUBJECTS, VERBS, OBJECTS, PLACES))
    out += [f"{s} {v} {o} {p}." for (s, v, o, p) in combos[::53]]
    out += [q.format(t) for q in QUESTIONS for t in TOPICS]
    out += [f"{t.capitalize()} is a topic many people want to understand." for t in TOPICS]
    out += [f"The answer is {w}." for w in ("yes", "no") for _ in range(5)]
    return out


# --------------------------------------------------------------------------------------
# Test inputs shared by every fixture (each is run ALONE, no padding).
# --------------------------------------------------------------------------------------
LONG_1 = (
    "Text embeddings map a piece of text to a fixed-size vector, so that texts with similar meaning "
    "end up close to each other. A server tokenizes the sentences, runs an encoder, and pools the "
    "hidden states into one vector per sentence."
)
LONG_2 = (
    "On Tuesday morning the old train left the station at 7:15, carried 240 passengers through the "
    "mountains, and arrived just before noon. Le café était chaud, and everyone agreed 👍 that the "
    "journey was worth it."
)

TEXTS: list[tuple[str, str]] = [
    ("query", "what is deep learning?"),
    ("word", "hello"),
    ("unicode", "Crème brûlée, 深度学习 and pizza 🍕 — naïve café 🦀"),
    ("sentence", "The quick brown fox jumps over the lazy dog."),
    ("numbers", "Order #4521 shipped on 2024-03-15 for $19.99 (qty: 3)."),
    ("long_1", LONG_1),
    ("long_2", LONG_2),
]

PAIRS: list[tuple[str, str, str]] = [
    ("relevant", "what is deep learning?",
     "Deep learning is a branch of machine learning that uses neural networks with many layers."),
    ("capital", "capital of france", "Paris is the capital and largest city of France."),
    ("irrelevant", "capital of france", "The Great Wall of China is visible from many places along its length."),
    ("long_doc", "how do I bake bread at home?",
     "Mix flour, water, salt and yeast, knead the dough for ten minutes, let it rise for an hour, "
     "and bake it in a hot oven at 220 degrees until the crust is golden."),
    ("short", "hello", "hello world"),
    ("unicode", "¿dónde está la estación?", "La estación de tren está cerca del centro. 🚉"),
]
