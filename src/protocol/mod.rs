//! The wire dialects over the typed inference API, shared by the HTTP routes (`server/`) and
//! the job runner (`jobs/`), so both render exactly the same bodies: OpenAI's embeddings
//! request and response (`openai`), and the error bodies of OpenAI and TEI (`errors`).
//! Knows JSON, not HTTP: statuses, headers and responses are the server's.

pub mod errors;
pub mod openai;
