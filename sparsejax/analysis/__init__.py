"""Analysis of sparse training: monitor, cost models, compression, residuals and summaries."""
