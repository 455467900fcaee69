"""The exact Deita scorer prompts, shared by scorer training, EVOL data and scoring.

Copied character for character from the original scorers (hkust-nlp/deita, ``Llama_Scorer`` /
``Mistral_Scorer``): note the two spaces before ``\\n##Complexity`` and the trailing space after
each colon. The trailing space tokenizes to SentencePiece's bare ``▁`` token, so the next token
the scorer predicts is the bare digit ``1``..``6``.
"""

COMPLEXITY_TEMPLATE = (
    "You are a helpful assistant. Please identify the complexity score of the following user query. \n"
    "##Query: {instruction}  \n##Complexity: "
)
QUALITY_TEMPLATE = (
    "You are a helpful assistant. Please identify the quality score of the Response corresponding to the Question. \n"
    " #Question#:\n{instruction}\n#Response#:\n{output} \n##Quality: "
)
SCORE_DIGITS = ("1", "2", "3", "4", "5", "6")


def complexity_prompt(instruction: str) -> str:
    """The complexity scorer's prompt for one user query (no history, as the original)."""
    return COMPLEXITY_TEMPLATE.format(instruction=instruction)


def quality_prompt(instruction: str, output: str) -> str:
    """The quality scorer's prompt for one (query, response) pair."""
    return QUALITY_TEMPLATE.format(instruction=instruction, output=output)
