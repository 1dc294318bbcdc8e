"""Any fitted recommender as an MLflow pyfunc model (tracking.log_and_register_model logs the
two-stage ranker this way).

No ``from __future__ import annotations`` here: MLflow reads ``predict``'s type hints at class
creation to infer the model's signature, and string annotations defeat it.
"""

import pandas as pd
from mlflow.pyfunc import PythonModel


class RecommenderModel(PythonModel):
    """A fitted recommender as an MLflow pyfunc model.

    ``predict`` takes events (``user_id, item_id, event_type, ts``) and returns each user's top
    ``k`` as rows ``user_id, rank, item_id, score``, scored as of just after the newest event,
    from the catalogue and the log the model was bound to.
    """

    def __init__(self, recommender, k: int = 10):
        self.recommender, self.k = recommender, k

    def predict(self, context, model_input: pd.DataFrame) -> pd.DataFrame:
        from freshrec.models.data import Histories, normalize_events

        rec = self.recommender
        ev = normalize_events(pd.DataFrame(model_input))
        hist = Histories.from_events(ev, rec.catalogue, now=int(ev["t"].max()) + 1 if len(ev) else None)
        items, scores = rec.recommend(hist, self.k)
        rows = [(user, rank + 1, rec.catalogue.item_ids[i], float(v)) for user, top, vals in zip(hist.user_ids, items, scores, strict=True)
                for rank, (i, v) in enumerate(zip(top, vals, strict=True)) if i >= 0]
        return pd.DataFrame(rows, columns=["user_id", "rank", "item_id", "score"])
