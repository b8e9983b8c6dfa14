//! How a model wants its inputs worded, decided at load from what the model is (its head and
//! task), never from its name: a cross-encoder reranker reads (query, document) as a segment
//! pair; a causal LM reranker (Qwen3-Reranker) reads one prompt and answers "yes" or "no".

/// How a reranker takes a (query, document) pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RerankTemplate {
    /// Two segments, `[CLS] query [SEP] document [SEP]` or the tokenizer's own pair form.
    Pair,
    /// One prompt whose next token is the answer, scored by the "yes" and "no" logits.
    YesNoPrompt,
}

/// A prompt around a text: the text (`body`) is what truncation may shorten.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Prompt {
    pub prefix: String,
    pub body: String,
    pub suffix: String,
}

/// Qwen3-Reranker's documented prompt: a system line asking for "yes" or "no", the
/// instruction, query and document, then the assistant's empty thinking block, so the next
/// token is the answer. `instruction` defaults to the model card's web-search task.
pub fn yes_no_prompt(instruction: Option<&str>, query: &str, doc: &str) -> Prompt {
    const PREFIX: &str = "<|im_start|>system\nJudge whether the Document meets the requirements \
        based on the Query and the Instruct provided. Note that the answer can only be \"yes\" \
        or \"no\".<|im_end|>\n<|im_start|>user\n";
    const SUFFIX: &str = "<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n";
    const DEFAULT_INSTRUCTION: &str =
        "Given a web search query, retrieve relevant passages that answer the query";
    let instruction = instruction.unwrap_or(DEFAULT_INSTRUCTION);
    Prompt {
        prefix: PREFIX.to_string(),
        body: format!("<Instruct>: {instruction}\n<Query>: {query}\n<Document>: {doc}"),
        suffix: SUFFIX.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_prompt_ends_where_the_answer_starts() {
        let p = yes_no_prompt(None, "q", "d");
        assert!(p.body.starts_with("<Instruct>: Given a web search query"));
        assert!(p.body.ends_with("<Query>: q\n<Document>: d"));
        assert!(p.suffix.ends_with("</think>\n\n"));
        assert!(yes_no_prompt(Some("Find code"), "q", "d")
            .body
            .starts_with("<Instruct>: Find code\n"));
    }
}
