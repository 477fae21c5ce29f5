"""What providers differ in: prompt-cache capabilities and injection, usage dialects,
prices, and Gemini's explicit cached contents (public as ``limpet.gemini``).

Internal: import from ``limpet`` or ``limpet.gemini``."""
