//! Optimisers (Adam, AdamW with parameter groups), gradient clipping and lr schedules.
