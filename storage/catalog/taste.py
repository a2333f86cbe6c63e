"""The catalog's taste tables: evaluations (epochs, metrics, the judges' scores) and trigger checks."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from typing import Any

from storage.catalog.core import CatalogCore, now

# (version, statements), numbered over every phase (storage/catalog/__init__.py joins the lists).
# Append new versions; never edit a released one.
MIGRATIONS: list[tuple[int, str]] = [
    (
        6,
        """
        CREATE TABLE evaluations (
            eval_key VARCHAR PRIMARY KEY,  -- one evaluation: bake + evaluate parameters + code
            run_id VARCHAR,
            bake_key VARCHAR NOT NULL,
            name VARCHAR NOT NULL,
            recommended_epoch INTEGER,     -- NULL: nothing to recommend (no epoch changes the image)
            weight_min DOUBLE,
            weight_max DOUBLE,
            recommended_file VARCHAR,
            reasons JSON NOT NULL,         -- the rules that fired, in order
            flags JSON NOT NULL,           -- problems found, with their likely causes
            loss_shape VARCHAR,            -- none | flat | falling | falling_then_rising | rising
            likeness_method VARCHAR,       -- NULL: not measured; histogram | embedding:<model type>
            report_path VARCHAR NOT NULL,
            load_s DOUBLE,                 -- LoRA loading/weight swapping
            render_s DOUBLE,               -- image generation
            cells INTEGER,                 -- images generated
            created_at TIMESTAMPTZ NOT NULL
        );
        CREATE TABLE evaluation_epochs (
            eval_key VARCHAR NOT NULL,
            epoch INTEGER NOT NULL,
            file VARCHAR NOT NULL,
            loss_mean DOUBLE,
            effect DOUBLE NOT NULL,        -- mean |pixel| difference weight 0 vs 1, 0-255
            does_nothing BOOLEAN NOT NULL,
            fries_at DOUBLE,               -- lowest weight that fries; NULL: none
            over_trained BOOLEAN NOT NULL,
            PRIMARY KEY (eval_key, epoch)
        );
        CREATE TABLE evaluation_metrics (
            eval_key VARCHAR NOT NULL,
            epoch INTEGER NOT NULL,
            weight DOUBLE NOT NULL,
            effect DOUBLE NOT NULL,        -- vs weight 0, 0-255
            saturation DOUBLE NOT NULL,
            contrast DOUBLE NOT NULL,
            hf_energy DOUBLE NOT NULL,
            fry_score DOUBLE NOT NULL,
            likeness DOUBLE,
            PRIMARY KEY (eval_key, epoch, weight)
        );
        """,
    ),
    (
        11,
        """
        CREATE TABLE trigger_checks (      -- is each trigger free on the base model? (rules.md §10, §13)
            check_key VARCHAR NOT NULL,    -- the trigger_check stage's parameters + triggers
            run_id VARCHAR NOT NULL,
            trigger VARCHAR NOT NULL,      -- a trigger, or a nonsense control word (is_control)
            is_control BOOLEAN NOT NULL,
            verdict VARCHAR,               -- free | contaminated (NULL for controls)
            drawn_tags VARCHAR,            -- JSON list: tags the base model draws for it
            tag_shares VARCHAR,            -- JSON {tag: share of its renders}
            similarity DOUBLE,             -- mean pairwise cosine of its renders (NULL: no embedding model)
            control_similarity DOUBLE,
            created_at TIMESTAMPTZ NOT NULL,
            PRIMARY KEY (check_key, trigger)
        );
        """,
    ),
    (
        14,
        """
        -- The tag judges and the ranking of an evaluation (bakery/craft/taste/judges/panel.py), one row per score.
        CREATE TABLE evaluation_scores (
            eval_key VARCHAR NOT NULL,
            epoch INTEGER NOT NULL,
            weight DOUBLE NOT NULL,
            judge VARCHAR NOT NULL,        -- identity | bleed | flexibility | effect_ratio | rank_score
            subject VARCHAR NOT NULL,      -- the trigger (identity, bleed) or prompt (flexibility); '' for the others
            score DOUBLE NOT NULL,         -- recall 0-1; effect_ratio: effect / change between seeds
            PRIMARY KEY (eval_key, epoch, weight, judge, subject)
        );
        """,
    ),
]


class TasteTables(CatalogCore):
    """Evaluations of bakes with their epochs, metrics and judges' scores; trigger checks on the base model."""

    # -- evaluations -------------------------------------------------------------
    def add_evaluation(self, row: dict[str, Any], epochs: Iterable[dict[str, Any]], metrics: Iterable[dict[str, Any]]) -> None:
        """One evaluation and its numbers; re-evaluating the same key replaces them."""
        key = row["eval_key"]
        self.con.execute("BEGIN TRANSACTION")
        try:
            for table in ("evaluation_metrics", "evaluation_epochs", "evaluations"):
                self.con.execute(f"DELETE FROM {table} WHERE eval_key = ?", [key])
            self._insert("evaluations", [{**row, "created_at": now()}], verb="INSERT")
            self._insert("evaluation_epochs", ({**r, "eval_key": key} for r in epochs), verb="INSERT")
            self._insert("evaluation_metrics", ({**r, "eval_key": key} for r in metrics), verb="INSERT")
            self.con.execute("COMMIT")
        except Exception:
            self.con.execute("ROLLBACK")
            raise

    def evaluation(self, eval_key: str | None = None, bake_key: str | None = None) -> dict[str, Any] | None:
        """An evaluation by key, or the latest one of a bake, with its epochs and metrics."""
        if eval_key:
            rows = self.rows("SELECT * FROM evaluations WHERE eval_key = ?", [eval_key])
        else:
            rows = self.rows("SELECT * FROM evaluations WHERE bake_key = ? ORDER BY created_at DESC LIMIT 1", [bake_key])
        if not rows:
            return None
        ev = rows[0]
        ev["reasons"], ev["flags"] = json.loads(ev["reasons"]), json.loads(ev["flags"])
        ev["epochs"] = self.rows("SELECT * EXCLUDE (eval_key) FROM evaluation_epochs WHERE eval_key = ? ORDER BY epoch", [ev["eval_key"]])
        ev["metrics"] = self.rows(
            "SELECT * EXCLUDE (eval_key) FROM evaluation_metrics WHERE eval_key = ? ORDER BY epoch, weight", [ev["eval_key"]]
        )
        return ev

    def evaluation_reports(self) -> list[dict[str, Any]]:
        return self.rows("SELECT eval_key, run_id, name, report_path, created_at FROM evaluations ORDER BY created_at DESC")

    def add_evaluation_scores(self, eval_key: str, rows: Iterable[dict[str, Any]]) -> int:
        """The judges' scores of one evaluation; re-evaluating replaces them."""
        self.con.execute("DELETE FROM evaluation_scores WHERE eval_key = ?", [eval_key])
        return self._insert("evaluation_scores", ({**r, "eval_key": eval_key} for r in rows), verb="INSERT")

    def evaluation_scores(self, eval_key: str) -> list[dict[str, Any]]:
        return self.rows("SELECT * EXCLUDE (eval_key) FROM evaluation_scores WHERE eval_key = ? "
                         "ORDER BY judge, subject, epoch, weight", [eval_key])

    # -- trigger checks ----------------------------------------------------------
    def add_trigger_checks(self, check_key: str, run_id: str, rows: Iterable[dict[str, Any]]) -> int:
        """One trigger check's rows (triggers and controls); checking the same key again replaces them."""
        self.con.execute("DELETE FROM trigger_checks WHERE check_key = ?", [check_key])
        return self._insert("trigger_checks", [{**r, "check_key": check_key, "run_id": run_id, "created_at": now()}
                                               for r in rows], verb="INSERT")

    def trigger_checks(self, check_key: str) -> list[dict[str, Any]]:
        return self.rows("SELECT * FROM trigger_checks WHERE check_key = ? ORDER BY is_control, trigger", [check_key])

    def latest_trigger_checks(self, triggers: Sequence[str]) -> list[dict[str, Any]]:
        """The latest verdict of each of these triggers (none for a trigger never checked)."""
        return self.rows(
            "SELECT * FROM trigger_checks WHERE NOT is_control AND list_contains(?, trigger) "
            "QUALIFY row_number() OVER (PARTITION BY trigger ORDER BY created_at DESC) = 1 ORDER BY trigger",
            [list(triggers)])
