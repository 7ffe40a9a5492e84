"""proxy_model package."""
