# lme4 / arm timed INSIDE R (no transfer):
#   Rscript r_fit.R <model> <out.json> <repeats> <cap seconds> <dir>...
# Each <dir> holds raw binary columns written by benchmarks/datasets.py (meta.json lists them);
# model "insteval" ignores the dirs and fits lme4's InstEval. For every data set it reports the
# median elapsed time of up to `repeats` fits (fewer once `cap` s are spent; system.time), R's heap peak during the fit
# (gc(reset=TRUE) before, "max used" after), and the estimates every other engine is checked
# against.
suppressMessages({library(lme4); library(arm); library(jsonlite)})
args <- commandArgs(TRUE)
model <- args[1]; out <- args[2]; repeats <- as.integer(args[3]); cap <- as.numeric(args[4])
dirs <- args[-(1:4)]

read_dir <- function(d) {
  meta <- fromJSON(file.path(d, "meta.json"))
  cols <- list()
  for (nm in names(meta$columns)) {
    kind <- meta$columns[[nm]]
    con <- file(file.path(d, paste0(nm, ".bin")), "rb")
    cols[[nm]] <- if (kind == "int32") readBin(con, "integer", meta$n, size = 4)
                  else readBin(con, "double", meta$n)
    close(con)
  }
  df <- as.data.frame(cols)
  df$g <- factor(df$g)
  list(data = df, meta = meta)
}

fit_once <- function(model, df) {
  switch(model,
    lmm = lmer(y ~ x1 + x2 + x3 + (1 | g), df, REML = TRUE),
    glmm = glmer(y ~ x1 + x2 + (1 | g), df, family = binomial),
    bayesglm = bayesglm(y ~ x + g, data = df, family = gaussian),
    insteval = lmer(y ~ service + (1 | s) + (1 | d) + (1 | dept), InstEval, REML = TRUE))
}

estimates <- function(model, f) {
  if (model == "bayesglm") {
    return(list(coef = unname(coef(f)), coef_names = names(coef(f)),
                se = unname(sqrt(diag(vcov(f)))), dispersion = f$dispersion))
  }
  list(fixef = unname(fixef(f)), fixef_names = names(fixef(f)),
       se = unname(sqrt(diag(as.matrix(vcov(f))))), theta = unname(getME(f, "theta")),
       sigma = sigma(f), criterion = -2 * as.numeric(logLik(f)))
}

results <- list()
if (model == "insteval") dirs <- "InstEval"
for (d in dirs) {
  df <- if (model == "insteval") NULL else read_dir(d)$data
  times <- numeric(0); peak <- NA_real_; f <- NULL
  for (r in seq_len(repeats)) {
    invisible(gc(reset = TRUE))
    before <- sum(gc()[, 2])
    tm <- system.time(f <- suppressWarnings(suppressMessages(fit_once(model, df))))
    after <- gc()
    peak <- max(peak, sum(after[, ncol(after)]) - before, na.rm = TRUE)  # "max used" (Mb)
    times <- c(times, tm[["elapsed"]])
    if (sum(times) > cap) break
  }
  results[[length(results) + 1]] <- c(list(dir = d, times = times, median = median(times),
                                            peak_mb = peak), estimates(model, f))
}
writeLines(toJSON(results, digits = NA, auto_unbox = TRUE), out)
