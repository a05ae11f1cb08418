//! The one walk over the network's topology: stem → layer1 → transitions → stages of modules (branches
//! of residual blocks, then fuse rows) → head. What a node does is the executor's: record an autograd
//! op, run a fused CPU kernel, launch a GPU kernel or count multiply-adds.

use super::plan::{Plan, PlanBlock, PlanFuse, PlanModule};
use anyhow::Result;

/// Where a term stands in its fuse row; executors place the row's ReLU by it.
#[derive(Clone, Copy, Debug)]
pub struct Term {
    /// The output branch (i).
    pub row: usize,
    /// The input branch (j).
    pub col: usize,
    /// The row's last term in index order (a sum built left to right ends here).
    pub ends_row: bool,
    /// No term but the identity follows (a sum started from the identity ends here).
    pub last_added: bool,
}

/// What the walk asks of an engine. `Act` is an activation, `Conv` a conv node of the plan (with its
/// BN and ReLU flag), `Row` a fuse row being summed. Activations passed by reference stay the walk's;
/// the walk hands each one it no longer needs to `release`.
pub trait Executor: Sized {
    type Act: Send + Sync;
    type Conv: Sync;
    type Row;

    /// The conv node as planned (its BN and its own ReLU included).
    fn conv(&mut self, conv: &Self::Conv, x: &Self::Act) -> Result<Self::Act>;
    /// A residual block's end: relu(last(y) + shortcut), the shortcut being `downsample(x)` or `x`.
    fn block_out(
        &mut self, last: &Self::Conv, y: &Self::Act, x: &Self::Act, downsample: Option<&Self::Conv>,
    ) -> Result<Self::Act>;
    /// An identity transition's output.
    fn copy(&mut self, x: &Self::Act) -> Result<Self::Act>;
    /// An activation the walk is done with.
    fn release(&mut self, _x: Self::Act) {}

    /// Starts the sum of fuse row `row`, whose output has the shape of `target` (branch `row`'s input).
    fn row_begin(&mut self, row: usize, target: &Self::Act) -> Result<Self::Row>;
    /// Adds branch i's own activation.
    fn row_identity(&mut self, sum: &mut Self::Row, y: &Self::Act, term: Term) -> Result<()>;
    /// Adds `conv(y)` resized to `target`'s size.
    fn row_up(
        &mut self, sum: &mut Self::Row, conv: &Self::Conv, y: &Self::Act, target: &Self::Act, term: Term,
    ) -> Result<()>;
    /// Adds `last_link(y)`, the end of a downsampling chain (the walk ran the links before it).
    fn row_down(&mut self, sum: &mut Self::Row, last_link: &Self::Conv, y: &Self::Act, term: Term) -> Result<()>;
    /// The row's output: relu of the sum.
    fn row_end(&mut self, sum: Self::Row, target: &Self::Act) -> Result<Self::Act>;

    /// The head's input: branch 0 and the others resized to its size, concatenated by channel.
    fn head_input(&mut self, branches: &[Self::Act]) -> Result<Self::Act>;

    /// A named activation of the parity cases (`eval_act.*`); only the autograd engine keeps them.
    fn record(&mut self, _name: impl FnOnce() -> String, _x: &Self::Act) {}

    /// `run` over independent items (the branches of a module, its fuse rows), in order by default;
    /// an engine may run them concurrently, each on its own copy of the executor.
    fn each<T: Send>(
        &mut self, items: Vec<T>, run: impl Fn(&mut Self, T) -> Result<Self::Act> + Sync,
    ) -> Result<Vec<Self::Act>> {
        items.into_iter().map(|item| run(self, item)).collect()
    }
}

/// The network's forward pass over `plan`, from the input activation to the heatmaps.
pub fn forward<E: Executor>(plan: &Plan<E::Conv>, exec: &mut E, x: E::Act) -> Result<E::Act> {
    let y = consume(exec, &plan.stem[0], x)?;
    exec.record(|| "stem1".into(), &y);
    let mut y = consume(exec, &plan.stem[1], y)?;
    exec.record(|| "stem2".into(), &y);
    for b in &plan.layer1 {
        y = block(exec, b, y)?;
    }
    exec.record(|| "layer1".into(), &y);
    let mut ys = vec![y];
    for (k, (transition, modules)) in plan.transitions.iter().zip(&plan.stages).enumerate() {
        let mut xs = Vec::with_capacity(transition.len());
        for (i, t) in transition.iter().enumerate() {
            // A new branch grows from the lowest-resolution one.
            let src = ys.get(i).or(ys.last()).expect("a stage has ≥ 1 branch");
            let v = match t {
                Some(links) => chain(exec, links, src)?,
                None => exec.copy(src)?,
            };
            exec.record(|| format!("transition{}.{i}", k + 1), &v);
            xs.push(v);
        }
        ys.into_iter().for_each(|y| exec.release(y));
        ys = xs;
        for (m, module) in modules.iter().enumerate() {
            ys = self::module(exec, module, ys)?;
            for (i, y) in ys.iter().enumerate() {
                exec.record(|| format!("stage{}.{m}.{i}", k + 2), y);
            }
        }
    }
    let cat = exec.head_input(&ys)?;
    ys.into_iter().for_each(|y| exec.release(y));
    exec.record(|| "head_input".into(), &cat);
    let h = consume(exec, &plan.head0, cat)?;
    exec.record(|| "head.2".into(), &h);
    consume(exec, &plan.head3, h)
}

/// A conv whose input the walk no longer needs.
fn consume<E: Executor>(exec: &mut E, conv: &E::Conv, x: E::Act) -> Result<E::Act> {
    let y = exec.conv(conv, &x)?;
    exec.release(x);
    Ok(y)
}

/// The links one after another (at least one).
fn chain<E: Executor>(exec: &mut E, links: &[E::Conv], x: &E::Act) -> Result<E::Act> {
    let (first, rest) = links.split_first().expect("a conv chain has ≥ 1 link");
    let mut y = exec.conv(first, x)?;
    for l in rest {
        y = consume(exec, l, y)?;
    }
    Ok(y)
}

/// `chain`, or None for no links.
fn chain_or_none<E: Executor>(exec: &mut E, links: &[E::Conv], x: &E::Act) -> Result<Option<E::Act>> {
    if links.is_empty() {
        return Ok(None);
    }
    chain(exec, links, x).map(Some)
}

fn block<E: Executor>(exec: &mut E, b: &PlanBlock<E::Conv>, x: E::Act) -> Result<E::Act> {
    let (last, inner) = b.layers.split_last().expect("a block has ≥ 1 layer");
    let y = chain_or_none(exec, inner, &x)?;
    let out = exec.block_out(last, y.as_ref().unwrap_or(&x), &x, b.downsample.as_ref())?;
    if let Some(y) = y {
        exec.release(y);
    }
    exec.release(x);
    Ok(out)
}

fn module<E: Executor>(exec: &mut E, m: &PlanModule<E::Conv>, xs: Vec<E::Act>) -> Result<Vec<E::Act>> {
    let branches = xs.into_iter().zip(&m.branches).collect();
    let ys = exec.each(branches, |exec, (x, blocks)| {
        let mut y = x;
        for b in blocks {
            y = block(exec, b, y)?;
        }
        Ok(y)
    })?;
    if m.fuse.is_empty() {
        return Ok(ys);
    }
    let out = exec.each((0..m.fuse.len()).collect(), |exec, i| fuse_row(exec, i, &m.fuse[i], &ys))?;
    ys.into_iter().for_each(|y| exec.release(y));
    Ok(out)
}

/// Output branch i: relu(Σ_j term(i, j)(ys[j])).
fn fuse_row<E: Executor>(exec: &mut E, i: usize, row: &[PlanFuse<E::Conv>], ys: &[E::Act]) -> Result<E::Act> {
    let target = &ys[i];
    let mut sum = exec.row_begin(i, target)?;
    let last_added = (0..row.len()).rev().find(|&j| j != i && !matches!(row[j], PlanFuse::Identity));
    for (j, f) in row.iter().enumerate() {
        let term = Term { row: i, col: j, ends_row: j + 1 == row.len(), last_added: last_added == Some(j) };
        match f {
            PlanFuse::Identity => exec.row_identity(&mut sum, &ys[j], term)?,
            PlanFuse::Up(conv) => exec.row_up(&mut sum, conv, &ys[j], target, term)?,
            PlanFuse::Down(links) => {
                let (last, inner) = links.split_last().expect("a conv chain has ≥ 1 link");
                let t = chain_or_none(exec, inner, &ys[j])?;
                exec.row_down(&mut sum, last, t.as_ref().unwrap_or(&ys[j]), term)?;
                if let Some(t) = t {
                    exec.release(t);
                }
            }
        }
    }
    exec.row_end(sum, target)
}
