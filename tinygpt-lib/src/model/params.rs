//! The model's trainable tensors, by name.
//!
//! A `BTreeMap` keeps them sorted by name: the order the optimizer, the gradient all-reduce and the
//! checkpoint files use, the same on every run and every worker (a `HashMap` would not be).

use std::collections::{BTreeMap, HashMap};

use candle_core::{DType, Device, Tensor, Var};

use crate::rng::Rng;
use crate::{Error, Result};

/// Every trainable tensor of a model, sorted by name. Layers hold clones of the same tensors
/// (a clone shares storage), so an optimizer updating a `Var` here updates the model.
#[derive(Clone, Default)]
pub struct Params {
    vars: BTreeMap<String, Var>,
}

impl Params {
    pub fn iter(&self) -> impl Iterator<Item = (&String, &Var)> {
        self.vars.iter()
    }

    pub fn get(&self, name: &str) -> Option<&Var> {
        self.vars.get(name)
    }

    pub fn len(&self) -> usize {
        self.vars.len()
    }

    pub fn is_empty(&self) -> bool {
        self.vars.is_empty()
    }

    /// The number of scalars in all tensors.
    pub fn count(&self) -> usize {
        self.vars.values().map(|v| v.elem_count()).sum()
    }

    /// Name → tensor, for saving.
    pub fn tensors(&self) -> BTreeMap<String, Tensor> {
        self.vars
            .iter()
            .map(|(k, v)| (k.clone(), v.as_tensor().clone()))
            .collect()
    }
}

/// How a weight of a fresh model is filled.
#[derive(Clone, Copy, Debug)]
pub enum Init {
    /// Normal with mean 0 and this standard deviation.
    Normal(f64),
    Zeros,
    Ones,
}

/// Where the weights come from while a model is built: fresh ones from a seeded generator, or
/// loaded ones (a checkpoint, an import) looked up by name and checked for shape.
pub enum WeightSource {
    Init(Rng),
    Loaded(HashMap<String, Tensor>),
}

/// Hands out named weights to the layers as they are built and records them in a [`Params`].
pub struct ParamBuilder {
    source: WeightSource,
    device: Device,
    params: Params,
}

impl ParamBuilder {
    pub fn new(source: WeightSource, device: &Device) -> Self {
        ParamBuilder {
            source,
            device: device.clone(),
            params: Params::default(),
        }
    }

    /// The weight called `name`, of shape `shape`, as an `f32` trainable tensor on the device.
    pub fn get(&mut self, name: &str, shape: &[usize], init: Init) -> Result<Tensor> {
        let tensor = match &mut self.source {
            WeightSource::Init(rng) => {
                let n: usize = shape.iter().product();
                let values: Vec<f32> = match init {
                    Init::Normal(std) => (0..n).map(|_| (rng.normal() * std) as f32).collect(),
                    Init::Zeros => vec![0.0; n],
                    Init::Ones => vec![1.0; n],
                };
                Tensor::from_vec(values, shape, &self.device)?
            }
            WeightSource::Loaded(tensors) => {
                let t = tensors.remove(name).ok_or_else(|| {
                    Error::Invalid(format!("the weights have no tensor `{name}`"))
                })?;
                if t.dims() != shape {
                    return Err(Error::Invalid(format!(
                        "weight `{name}` has shape {:?}, the config needs {shape:?}",
                        t.dims()
                    )));
                }
                // Weights are kept in f32 (f64 stays f64: the gradient checks need it).
                let dtype = if t.dtype() == DType::F64 {
                    DType::F64
                } else {
                    DType::F32
                };
                t.to_dtype(dtype)?.to_device(&self.device)?
            }
        };
        let var = Var::from_tensor(&tensor)?;
        let t = var.as_tensor().clone();
        if self.params.vars.insert(name.to_string(), var).is_some() {
            return Err(Error::Invalid(format!("two weights are called `{name}`")));
        }
        Ok(t)
    }

    /// The parameters handed out; with loaded weights, an error if some were never asked for
    /// (a checkpoint of another architecture).
    pub fn finish(self) -> Result<Params> {
        if let WeightSource::Loaded(rest) = &self.source {
            if !rest.is_empty() {
                let mut names: Vec<&String> = rest.keys().collect();
                names.sort();
                return Err(Error::Invalid(format!(
                    "the weights hold tensors this config does not use: {names:?}"
                )));
            }
        }
        Ok(self.params)
    }
}
