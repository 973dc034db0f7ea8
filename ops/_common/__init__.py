"""What every op folder shares: the ``Op`` object (:mod:`.op`), the registry that finds the
folders (:mod:`.registry`), ONNX schema helpers (:mod:`.schema_util`) and the Relax converter
base (:mod:`.relax_util`, imports TVM). Not an op: the registry skips ``_`` packages."""
