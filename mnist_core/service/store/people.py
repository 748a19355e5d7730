"""People and the class: display names claimed by a browser token's hash, and class settings
(the pinned run)."""

from __future__ import annotations

import time

from mnist_core.service.store.database import Database


class People(Database):
    """Claimed names and class settings."""

    def claim_name(self, name_key: str, name: str, token_hash: str) -> bool:
        """Give `name` to the browser whose token hashes to `token_hash`: True if it is now that
        browser's name (new, or claimed by it before), False if another browser holds it."""
        with self._write() as conn:
            row = conn.execute("SELECT token_hash FROM people WHERE name_key = ?", (name_key,)).fetchone()
            if row is not None and row[0] != token_hash:
                return False
            conn.execute(
                "INSERT INTO people (name_key, name, token_hash, claimed) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (name_key) DO UPDATE SET name = excluded.name, claimed = excluded.claimed",
                (name_key, name, token_hash, time.time()),
            )
            return True

    def name_for(self, token_hash: str) -> str | None:
        """The name this browser claimed last, or None."""
        rows = self._read("SELECT name FROM people WHERE token_hash = ? ORDER BY claimed DESC LIMIT 1",
                          (token_hash,))
        return rows[0][0] if rows else None

    def class_setting(self, key: str) -> str | None:
        rows = self._read("SELECT value FROM class_settings WHERE key = ?", (key,))
        return rows[0][0] if rows else None

    def set_class_setting(self, key: str, value: str | None) -> None:
        """Set (or, with None, remove) one deployment-wide setting, such as the pinned run."""
        with self._write() as conn:
            if value is None:
                conn.execute("DELETE FROM class_settings WHERE key = ?", (key,))
            else:
                conn.execute("INSERT INTO class_settings (key, value) VALUES (?, ?) "
                             "ON CONFLICT (key) DO UPDATE SET value = excluded.value", (key, value))

