//! Who is waiting for a piece of work: an online request (someone holds a connection open) or
//! a job (Batches-API lines or `spotinfer batch`: resumable, may wait). The tokenizer pool and
//! the queue each keep a lane per priority and always serve `Online` first.

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Priority {
    Online,
    Job,
}
