"""Application log lines: the search language (:mod:`.query`), the JSON built from the store's rows
(:mod:`.service`), and the API and page (:mod:`.api`)."""
