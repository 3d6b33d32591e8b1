"""Every table of the store, for alembic and the model/migration drift check.

Capabilities that own tables (trust list, directory mirror) declare them on `store.models.Base`
in their own `models` module; importing this module registers them all on `Base.metadata`.
"""

from mssante_operator.directory import models as _directory  # noqa: F401
from mssante_operator.store import models as _core  # noqa: F401
from mssante_operator.store.models import Base
from mssante_operator.trust import models as _trust  # noqa: F401

metadata = Base.metadata
