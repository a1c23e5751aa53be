"""Three tricks for hlb, written against contract 3."""

CONTRACT = 3
