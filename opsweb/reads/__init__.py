"""What opsweb reads and shows without writing or deciding anything: the page memo
(``memo``), quorums (``quorum``) and history (``history``). ``opsweb.policy`` decides from these
reads; ``opsweb.services`` writes. Importing this package imports nothing from either."""

from opsweb.reads.history import *  # noqa: F403
from opsweb.reads.memo import *  # noqa: F403
from opsweb.reads.quorum import *  # noqa: F403
