//! Readers for the on-disk dataset formats. Each streams its file record by record and
//! reports bad input with the file and record number; none of them knows about pools.

pub mod fed_aya;
pub mod masakhanews;
mod tsv;
pub mod xnli;
