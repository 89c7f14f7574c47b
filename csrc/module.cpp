// The one PYBIND11_MODULE of hpo_engine._C: every C++ piece registers itself here.
#include "registry.h"

PYBIND11_MODULE(_C, m) {
    m.doc() = "hpo-engine C++ hot paths";
    register_align(m);
    register_attention_cpu(m);
    register_linear_cpu(m);
    register_linear_w8a8_cpu(m);
    register_norm_rope_cpu(m);
}
