"""Operations: logging, the serve composition, health and metrics."""
