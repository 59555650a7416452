"""Security: API keys with scopes, per-key rate limits, and the Flask hook that checks them.

Keys live hashed in Redis (every replica sees them); a request sends
``Authorization: Bearer <key>``; a view declares the scope it needs with ``@requires``.
"""

from mlplatform.security.auth import init_app, may, requires
from mlplatform.security.keys import SCOPES, ApiKey, KeyStore
from mlplatform.security.pii import Tokeniser, tokeniser

__all__ = ["SCOPES", "ApiKey", "KeyStore", "init_app", "may", "requires", "Tokeniser", "tokeniser"]
