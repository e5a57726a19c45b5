//! candle's CPU matrix products, as tinygpt builds them (patched: vendor/candle-core/PATCH.md),
//! against a plain triple loop. The gemm crate computes them by default and Intel MKL with the
//! `mkl` feature (`cargo test -p tinygpt-tests --features mkl --test matmul`); both must give
//! exactly the loop's numbers for every operand layout the model produces: contiguous, a
//! transposed view (`x.matmul(&w.t())`, the weights' gradients `dyᵀ · x`), a strided view
//! neither library reads directly, batches, and a batch broadcast from one matrix.
//!
//! The entries are small integers, so every sum is exact in f32 and the comparison is equality:
//! a wrong row band, leading dimension or offset cannot hide in a tolerance.

use tinygpt::candle_core::{DType, Device, IndexOp, Tensor};

/// How an operand of logical shape `(rows, cols)` is laid out in memory.
#[derive(Clone, Copy, Debug)]
enum Layout {
    /// Row-major, contiguous.
    Contiguous,
    /// The transposed view of a contiguous `(cols, rows)` matrix.
    Transposed,
    /// Every other element of a contiguous `(rows, 2 * cols)` matrix: neither stride is 1.
    EveryOther,
}

const LAYOUTS: [Layout; 3] = [Layout::Contiguous, Layout::Transposed, Layout::EveryOther];

/// Entry `i` of an operand, a small integer in [-5, 5].
fn entry(seed: usize, i: usize) -> f32 {
    ((i * 7 + seed * 13) % 11) as f32 - 5.0
}

/// A `(batch, rows, cols)` tensor whose logical entries are `entry(seed, ·)` in row-major order,
/// stored with `layout`.
fn operand(seed: usize, (batch, rows, cols): (usize, usize, usize), layout: Layout) -> Tensor {
    let values: Vec<f32> = (0..batch * rows * cols).map(|i| entry(seed, i)).collect();
    let logical = Tensor::from_vec(values, (batch, rows, cols), &Device::Cpu).unwrap();
    let t = match layout {
        Layout::Contiguous => logical,
        Layout::Transposed => logical
            .transpose(1, 2)
            .unwrap()
            .contiguous()
            .unwrap()
            .t()
            .unwrap(),
        Layout::EveryOther => Tensor::stack(&[&logical, &logical.zeros_like().unwrap()], 3)
            .unwrap()
            .i((.., .., .., 0))
            .unwrap(),
    };
    assert_eq!(t.dims(), &[batch, rows, cols]);
    t
}

/// `(batch, m, n)` by the triple loop, in f64.
fn reference(a: &Tensor, b: &Tensor) -> Vec<f64> {
    let (batch, m, k) = a.dims3().unwrap();
    let n = b.dim(2).unwrap();
    let (a, b) = (a.to_vec3::<f32>().unwrap(), b.to_vec3::<f32>().unwrap());
    let mut c = Vec::with_capacity(batch * m * n);
    for s in 0..batch {
        for i in 0..m {
            for j in 0..n {
                c.push((0..k).map(|p| a[s][i][p] as f64 * b[s][p][j] as f64).sum());
            }
        }
    }
    c
}

fn check(a: &Tensor, b: &Tensor, what: &str) {
    let c = a.matmul(b).unwrap();
    let got: Vec<f64> = c
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap()
        .into_iter()
        .map(f64::from)
        .collect();
    let want = reference(a, b);
    assert_eq!(got.len(), want.len(), "{what}: output size");
    if let Some(i) = (0..got.len()).find(|&i| got[i] != want[i]) {
        panic!("{what}: element {i} is {} instead of {}", got[i], want[i]);
    }
}

/// Sizes: single elements, odd sizes (row bands of unequal length), the model's
/// shapes in miniature, and more rows than one band holds.
const SIZES: [(usize, usize, usize); 6] = [
    (1, 1, 1),
    (1, 9, 4),
    (67, 5, 3),
    (130, 77, 45),
    (256, 40, 300),
    (33, 96, 1),
];

/// `batch` products of each size, for every pair of operand layouts.
fn check_every_layout_pair(batch: usize, sizes: &[(usize, usize, usize)]) {
    for &(m, n, k) in sizes {
        for la in LAYOUTS {
            for lb in LAYOUTS {
                let a = operand(1, (batch, m, k), la);
                let b = operand(2, (batch, k, n), lb);
                let what = format!("{batch} x ({m}x{k} {la:?}) · ({k}x{n} {lb:?})");
                check(&a, &b, &what);
            }
        }
    }
}

#[test]
fn matmul_equals_the_triple_loop_for_every_layout() {
    let library = tinygpt::device::cpu_matmul_library();
    println!("CPU matmul library: {library}");
    check_every_layout_pair(1, &SIZES);
}

#[test]
fn batched_matmul_equals_the_triple_loop() {
    check_every_layout_pair(3, &[(67, 5, 3), (130, 77, 45)]);
}

#[test]
fn matmul_with_a_broadcast_batch_equals_the_triple_loop() {
    let (m, n, k) = (70, 33, 20);
    for layout in LAYOUTS {
        // One right-hand matrix for the batch (the batches of lhs stack into one product) ...
        let a = operand(5, (4, m, k), Layout::Contiguous);
        let b = operand(6, (1, k, n), layout)
            .broadcast_as((4, k, n))
            .unwrap();
        check(
            &a,
            &b,
            &format!("4 x ({m}x{k}) · broadcast ({k}x{n} {layout:?})"),
        );
        // ... and one left-hand matrix (a product per batch).
        let a = operand(7, (1, m, k), layout)
            .broadcast_as((4, m, k))
            .unwrap();
        let b = operand(8, (4, k, n), Layout::Contiguous);
        check(
            &a,
            &b,
            &format!("broadcast ({m}x{k} {layout:?}) · 4 x ({k}x{n})"),
        );
    }
}

/// Exact resumption needs the same bits from the same product every time, wherever its operands
/// happen to lie in memory (BLAS libraries may take other code paths for other alignments).
#[test]
fn a_product_has_the_same_bits_wherever_its_operands_lie() {
    let (m, n, k) = (200, 96, 288);
    let device = Device::Cpu;
    let a = Tensor::randn(0f32, 1f32, (m, k), &device).unwrap();
    let b = Tensor::randn(0f32, 1f32, (k, n), &device).unwrap();
    let bits = |a: &Tensor, b: &Tensor| -> Vec<u32> {
        let c = a.matmul(b).unwrap().flatten_all().unwrap();
        c.to_vec1::<f32>()
            .unwrap()
            .into_iter()
            .map(f32::to_bits)
            .collect()
    };
    let want = bits(&a, &b);
    // The same matrix `offset` floats into a larger buffer: a view whose data starts elsewhere.
    let shifted = |t: &Tensor, offset: usize| {
        let zeros = Tensor::zeros(offset, DType::F32, &device).unwrap();
        let buffer = Tensor::cat(&[&zeros, &t.flatten_all().unwrap()], 0).unwrap();
        let view = buffer.narrow(0, offset, t.elem_count()).unwrap();
        view.reshape(t.shape()).unwrap()
    };
    for offset in 1..=16 {
        let got = bits(&shifted(&a, offset), &shifted(&b, offset));
        assert!(
            got == want,
            "the product differs with its operands {offset} floats further on"
        );
    }
}
