"""What the pages explain and draw: glossary, lessons, safe text, pictures, data summaries."""
