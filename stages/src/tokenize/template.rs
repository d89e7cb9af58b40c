//! Prompt templates for Fed-Aya (PAPER_NOTES §1): the Alpaca template of FedLLM-Bench
//! (`utils/template.py`, used for MobileLLaMA), the Llama-3 chat template (Llama-3.2-Instruct),
//! and SmolLM2-Instruct's ChatML template (the laptop-scale real-weights model).

/// The response marker of the Alpaca template; its token ids mark where the completion-only
/// loss starts (FedLLM-Bench passes `'\n### Response:'` to TRL's collator).
pub const ALPACA_RESPONSE_MARKER: &str = "\n### Response:";

/// FedLLM-Bench's Alpaca template, verbatim — including the space after the instruction and the
/// single space between `### Response:` and the response.
const ALPACA_HEAD: &str =
    "Below is an instruction that describes a task. Write a response that appropriately completes the request.\n\n### Instruction:\n";

/// The Llama-3.2 chat template's system block when no system message is given; the date is the
/// template's own fallback, fixed so prompts do not depend on the day they are built
/// (transformers would insert today's date).
const LLAMA3_SYSTEM: &str = "<|start_header_id|>system<|end_header_id|>\n\nCutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024\n\n<|eot_id|>";

/// SmolLM2-Instruct's chat template (`tokenizer.chat_template` of its GGUF) puts this system
/// turn first when the conversation has none.
const SMOLLM2_SYSTEM: &str =
    "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n";

/// Which prompt format a model is trained/evaluated with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PromptTemplate {
    Alpaca,
    Llama3Chat,
    /// ChatML as SmolLM2-Instruct's template renders one user turn (its default system turn
    /// included, content not trimmed, no BOS).
    Smollm2Chat,
}

impl PromptTemplate {
    /// Training text: prompt, response and end marker (`eos` for Alpaca; `<|eot_id|>` for chat).
    pub fn training_text(self, instruction: &str, response: &str, eos: &str) -> String {
        match self {
            Self::Alpaca => format!("{}{response}{eos}", alpaca_prompt_with_space(instruction)),
            Self::Llama3Chat => format!(
                "{}{}<|eot_id|>",
                llama3_chat_prompt(instruction),
                response.trim()
            ),
            // The template closes every turn with `<|im_end|>` and a newline.
            Self::Smollm2Chat => {
                format!("{}{response}<|im_end|>\n", smollm2_chat_prompt(instruction))
            }
        }
    }

    /// Generation prompt (what the model continues).
    pub fn generation_prompt(self, instruction: &str) -> String {
        match self {
            Self::Alpaca => alpaca_prompt(instruction),
            Self::Llama3Chat => llama3_chat_prompt(instruction),
            Self::Smollm2Chat => smollm2_chat_prompt(instruction),
        }
    }

    /// Text whose tokens mark the start of the response for the completion-only loss.
    pub fn response_marker(self) -> &'static str {
        match self {
            Self::Alpaca => ALPACA_RESPONSE_MARKER,
            Self::Llama3Chat => "<|start_header_id|>assistant<|end_header_id|>\n\n",
            Self::Smollm2Chat => "<|im_start|>assistant\n",
        }
    }
}

fn alpaca_prompt_with_space(instruction: &str) -> String {
    format!("{ALPACA_HEAD}{instruction} \n\n### Response: ")
}

/// Alpaca generation prompt: FedLLM-Bench formats the template with an empty response and drops
/// the last character (the space), so the prompt ends with `### Response:`.
pub fn alpaca_prompt(instruction: &str) -> String {
    let mut p = alpaca_prompt_with_space(instruction);
    p.pop();
    p
}

/// Llama-3 chat prompt for one user turn with the generation prompt appended, as
/// `apply_chat_template(add_generation_prompt=True)` renders it (content trimmed, BOS text
/// included: the tokenizer must not add another BOS — encode with special tokens off).
pub fn llama3_chat_prompt(instruction: &str) -> String {
    format!(
        "<|begin_of_text|>{LLAMA3_SYSTEM}<|start_header_id|>user<|end_header_id|>\n\n{}<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n",
        instruction.trim()
    )
}

/// SmolLM2-Instruct's ChatML prompt for one user turn with the generation prompt, as its
/// `apply_chat_template(add_generation_prompt=True)` renders it.
pub fn smollm2_chat_prompt(instruction: &str) -> String {
    format!("{SMOLLM2_SYSTEM}<|im_start|>user\n{instruction}<|im_end|>\n<|im_start|>assistant\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alpaca_matches_fedllm_bench() {
        let t = PromptTemplate::Alpaca.training_text("Say hi", "hi", "</s>");
        assert_eq!(
            t,
            "Below is an instruction that describes a task. Write a response that appropriately completes the request.\n\n### Instruction:\nSay hi \n\n### Response: hi</s>"
        );
        assert!(PromptTemplate::Alpaca
            .generation_prompt("Say hi")
            .ends_with("\n### Response:"));
        assert!(t.starts_with(&PromptTemplate::Alpaca.generation_prompt("Say hi")));
    }

    #[test]
    fn llama3_prompt_is_prefix_of_training_text() {
        let p = PromptTemplate::Llama3Chat.generation_prompt(" Hola ");
        let t = PromptTemplate::Llama3Chat.training_text(" Hola ", "Buenas", "");
        assert!(t.starts_with(&p));
        assert!(t.ends_with("Buenas<|eot_id|>"));
        assert!(p.contains("user<|end_header_id|>\n\nHola<|eot_id|>"));
    }

    /// Both renderings equal transformers' `apply_chat_template` with the template from
    /// SmolLM2-Instruct's GGUF (fixture: tests/fixtures/gen/chat_templates.py), exactly.
    #[test]
    fn smollm2_chat_matches_the_models_own_template() {
        #[derive(serde::Deserialize)]
        struct Case {
            instruction: String,
            response: String,
            generation_prompt: String,
            conversation: String,
        }
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../tests/fixtures/imported/smollm2_chat_template.json"
        );
        let cases: Vec<Case> =
            serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        assert!(cases.len() >= 3);
        for c in &cases {
            let t = PromptTemplate::Smollm2Chat;
            assert_eq!(t.generation_prompt(&c.instruction), c.generation_prompt);
            assert_eq!(
                t.training_text(&c.instruction, &c.response, "unused"),
                c.conversation
            );
            assert!(c.conversation.starts_with(&c.generation_prompt));
            assert!(c.generation_prompt.ends_with(t.response_marker()));
        }
    }
}
