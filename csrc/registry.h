// Registration hooks of the pieces that make up the single `hpo_engine._C` extension.
// Each csrc/*.cpp that exposes functions defines one `register_*` and module.cpp calls it.
#pragma once
#include <pybind11/pybind11.h>

void register_align(pybind11::module_& m);
void register_attention_cpu(pybind11::module_& m);
void register_linear_cpu(pybind11::module_& m);
void register_linear_w8a8_cpu(pybind11::module_& m);
void register_norm_rope_cpu(pybind11::module_& m);
