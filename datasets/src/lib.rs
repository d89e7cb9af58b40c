//! Dataset readers, LDA partitioning and Parquet I/O.
