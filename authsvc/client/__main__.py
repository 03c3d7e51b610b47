"""``python -m authsvc.client jwks|assertion``: the client side of private_key_jwt registration
(:func:`authsvc.client.private_key_jwt.main`)."""

import sys

from authsvc.client.private_key_jwt import main

sys.exit(main())
