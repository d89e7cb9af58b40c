//! Scoring: accuracy, ROUGE-1/L (rouge_score parity) and METEOR (NLTK parity).
