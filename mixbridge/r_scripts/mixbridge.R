# mixbridge R side: fit lmer / glmer / bayesglm and return every result as a plain list.
#
# Contract (shared by the embedded rpy2 transport and the Rscript subprocess transport):
# * every entry point returns list(ok = TRUE/FALSE, value = <plain list>, messages = <list>,
#   error = NULL or list(text, call)); nothing is printed, nothing is thrown.
# * values are nested lists of unnamed atomic vectors: names travel in separate fields
#   (.mb_nv), matrices and arrays as list(dim, rownames, colnames, data) (.mb_mat).
# * only formula strings (the model formula, predict's re_form) are parsed as R code, after the
#   Python side validated them against an allow-list (as.formula); every other argument
#   arrives as data (numbers, strings, logicals).

.mb <- new.env()

# ---------------------------------------------------------------------------------------------
# Encoding helpers

.mb_nv <- function(x) {
  nm <- names(x)
  list(names = if (is.null(nm)) character(0) else as.character(nm), values = unname(as.vector(x)))
}

.mb_mat <- function(m) {
  m <- as.matrix(m)
  storage.mode(m) <- "double"
  dn <- dimnames(m)
  list(
    dim = as.integer(dim(m)),
    rownames = if (is.null(dn[[1]])) character(0) else as.character(dn[[1]]),
    colnames = if (is.null(dn[[2]])) character(0) else as.character(dn[[2]]),
    data = as.vector(m)
  )
}

.mb_call_text <- function(cond) {
  cl <- conditionCall(cond)
  if (is.null(cl)) return("")
  # Calls can embed large objects; keep the first lines only.
  paste(deparse(cl, nlines = 3L, width.cutoff = 200L), collapse = " ")
}

# Evaluate `expr`, collecting warnings, messages and an error (if any) as data.
.mb_capture <- function(expr) {
  msgs <- list()
  add <- function(kind, cond) {
    msgs[[length(msgs) + 1L]] <<- list(
      kind = kind,
      text = sub("\n+$", "", conditionMessage(cond)),
      call = .mb_call_text(cond)
    )
  }
  err <- NULL
  value <- withCallingHandlers(
    tryCatch(expr, error = function(e) {
      err <<- list(text = sub("\n+$", "", conditionMessage(e)), call = .mb_call_text(e))
      NULL
    }),
    warning = function(w) {
      add("warning", w)
      invokeRestart("muffleWarning")
    },
    message = function(m) {
      add("message", m)
      invokeRestart("muffleMessage")
    }
  )
  list(ok = is.null(err), value = value, messages = msgs, error = err)
}

.mb_versions <- function() {
  # packageVersion reads DESCRIPTION only: no namespace gets loaded (arm is slow to load).
  v <- function(p) {
    tryCatch(as.character(utils::packageVersion(p)), error = function(e) NA_character_)
  }
  list(
    R = paste(R.version$major, R.version$minor, sep = "."),
    lme4 = v("lme4"), Matrix = v("Matrix"), arm = v("arm"), jsonlite = v("jsonlite")
  )
}

mb_versions <- function() .mb_capture(.mb_versions())

# ---------------------------------------------------------------------------------------------
# Inputs

# The formula is the only user text parsed as R code (validated by the Python side first).
.mb_formula <- function(formula) {
  if (!is.character(formula) || length(formula) != 1L) stop("formula must be one string")
  f <- stats::as.formula(formula, env = new.env(parent = globalenv()))
  f[[length(f)]] <- .mb_balance_sums(f[[length(f)]])
  f
}

# R parses x1 + x2 + ... + xn as a chain n calls deep, and lme4's findbars, subbars and
# expandDoubleVerts recurse along it: about 640 terms exhaust the usual 8 MB C stack (and crash
# an embedded R, whose stack check rpy2 disables). The same sum as a balanced tree of `+` calls
# is log2(n) deep; terms(), model.frame() and lme4 give the same terms in the same order. Only
# the formula's own operators are rebuilt: a variable such as I(a + b + c) keeps its call, as
# its text names the column.
.mb_formula_ops <- c("+", "-", "*", "/", ":", "^", "%in%", "(", "|", "||")
.mb_balance_sums <- function(e) {
  if (!is.call(e) || !is.name(e[[1L]]) || !(as.character(e[[1L]]) %in% .mb_formula_ops)) {
    return(e)
  }
  plus <- as.name("+")
  if (identical(e[[1L]], plus) && length(e) == 3L) {
    summands <- list()
    while (is.call(e) && identical(e[[1L]], plus) && length(e) == 3L) {
      summands <- c(list(e[[3L]]), summands)
      e <- e[[2L]]
    }
    summands <- lapply(c(list(e), summands), .mb_balance_sums)
    build <- function(lo, hi) {
      if (lo == hi) return(summands[[lo]])
      mid <- (lo + hi) %/% 2L
      call("+", build(lo, mid), build(mid + 1L, hi))
    }
    return(build(1L, length(summands)))
  }
  for (j in seq_along(e)[-1L]) e[[j]] <- .mb_balance_sums(e[[j]])
  e
}

.mb_families <- c("gaussian", "binomial", "poisson", "Gamma", "inverse.gaussian",
                  "quasibinomial", "quasipoisson")

.mb_family <- function(family, link, nb_theta = NULL) {
  if (identical(family, "negative.binomial")) {  # MASS's negative.binomial(theta), log link
    if (is.null(nb_theta)) stop("family 'negative.binomial' needs theta")
    return(MASS::negative.binomial(theta = as.numeric(nb_theta)))
  }
  if (!is.character(family) || length(family) != 1L || !(family %in% .mb_families)) {
    stop(sprintf("unsupported family '%s'", paste(family, collapse = " ")))
  }
  fn <- get(family, envir = asNamespace("stats"), mode = "function")
  if (is.null(link) || length(link) == 0L) fn() else fn(link = as.character(link))
}

# Build a data frame from column vectors sent by Python. kinds: double, integer, logical,
# factor, ordered, string (factor codes index `uniques`; levels are R's sort of them).
mb_make_df <- function(cols, names, kinds, levels, nrow) {
  out <- vector("list", length(cols))
  for (j in seq_along(cols)) {
    x <- cols[[j]]
    k <- kinds[[j]]
    if (k == "logical") {
      x <- as.logical(x)
    } else if (k %in% c("factor", "ordered")) {
      x <- structure(as.integer(x), levels = as.character(levels[[j]]),
                     class = if (k == "ordered") c("ordered", "factor") else "factor")
    } else if (k == "string") {
      u <- as.character(levels[[j]])
      lev <- sort(u)
      x <- structure(match(u, lev)[as.integer(x)], levels = lev, class = "factor")
    }
    out[[j]] <- x
  }
  names(out) <- names
  attr(out, "row.names") <- .set_row_names(as.integer(nrow))
  class(out) <- "data.frame"
  out
}

# ---------------------------------------------------------------------------------------------
# lmer / glmer

# control keys are mixbridge's (mixbridge/control.py: one set, one meaning on every engine);
# here they become lme4's arguments. The evaluation limit `maxeval` has a different name per
# optimizer (nloptr: maxeval; bobyqa, Nelder_Mead: maxfun; nlminb: eval.max).
.mb_opt_ctrl <- function(control, optimizer) {
  if (is.null(control$maxeval)) return(list())
  n <- as.numeric(control$maxeval)
  if (any(optimizer == "nloptwrap")) list(maxeval = n)
  else if (any(optimizer == "nlminbwrap")) list(eval.max = n)
  else list(maxfun = n)
}

.mb_lmer_control <- function(control) {
  args <- list()
  if (!is.null(control$optimizer)) args$optimizer <- as.character(control$optimizer)
  if (!is.null(control$calc_derivs)) args$calc.derivs <- as.logical(control$calc_derivs)
  if (!is.null(control$boundary_tol)) args$boundary.tol <- as.numeric(control$boundary_tol)
  if (!is.null(control$restart_edge)) args$restart_edge <- as.logical(control$restart_edge)
  args$optCtrl <- .mb_opt_ctrl(control, if (is.null(args$optimizer)) "nloptwrap" else args$optimizer)
  do.call(lme4::lmerControl, args)
}

.mb_glmer_control <- function(control) {
  args <- list()
  if (!is.null(control$optimizer)) args$optimizer <- as.character(control$optimizer)
  if (!is.null(control$calc_derivs)) args$calc.derivs <- as.logical(control$calc_derivs)
  if (!is.null(control$boundary_tol)) args$boundary.tol <- as.numeric(control$boundary_tol)
  if (!is.null(control$restart_edge)) args$restart_edge <- as.logical(control$restart_edge)
  if (!is.null(control$tol_pwrss)) args$tolPwrss <- as.numeric(control$tol_pwrss)
  if (!is.null(control$nagq0_init_step)) args$nAGQ0initStep <- as.logical(control$nagq0_init_step)
  args$optCtrl <- .mb_opt_ctrl(control, if (is.null(args$optimizer)) "bobyqa" else args$optimizer)
  do.call(lme4::glmerControl, args)
}

# Build the (unevaluated) lmer/glmer call: symbols only, so no data is deparsed into messages.
# weights_col / offset_col: NULL or the data column holding the weights= / offset= argument
# (named by the Python side so that no variable of the formula has that name).
.mb_mer_call <- function(glmm, weights_col, offset_col, dev_fun_only = FALSE, start = NULL) {
  cl <- if (glmm) {
    quote(lme4::glmer(formula = fml, data = data, family = fam, nAGQ = nAGQ, control = ctrl))
  } else {
    quote(lme4::lmer(formula = fml, data = data, REML = REML, control = ctrl))
  }
  if (!is.null(weights_col)) cl$weights <- as.name(.mb_col(weights_col))
  if (!is.null(offset_col)) cl$offset <- as.name(.mb_col(offset_col))
  if (!is.null(start)) cl$start <- as.numeric(start)
  if (dev_fun_only) cl$devFunOnly <- TRUE
  cl
}

.mb_col <- function(name) {
  if (!is.character(name) || length(name) != 1L || !startsWith(name, ".mb_")) {
    stop("invalid weights/offset column name")
  }
  name
}

# A column name `base`, base_1, base_2, ... that `taken` does not use.
.mb_free_name <- function(base, taken) {
  name <- base
  k <- 0L
  while (name %in% taken) {
    k <- k + 1L
    name <- paste0(base, "_", k)
  }
  name
}

# Conditional modes per grouping factor: list(factor, modes) each.
.mb_ranef <- function(fit) {
  re <- lme4::ranef(fit, condVar = FALSE)
  lapply(names(re), function(f) {
    d <- re[[f]]
    m <- as.matrix(d)
    dimnames(m) <- list(rownames(d), colnames(d))
    list(factor = f, modes = .mb_mat(m))
  })
}

# Conditional variances (lme4's condVar) per grouping factor: list(factor, dim, values) each, an
# nc x nc x levels array. For a scalar term with 5e4 levels lme4 takes longer for this than for
# the fit itself (22 s vs 14 s at 1e6 rows), so the embedded transport computes it only when
# fit.cond_var is first read (.mb_mer_field), and control cond_var = FALSE skips it.
.mb_cond_var <- function(fit) {
  re <- lme4::ranef(fit, condVar = TRUE)
  lapply(names(re), function(f) {
    d <- re[[f]]
    pv <- attr(d, "postVar")
    nc <- ncol(d)
    nl <- nrow(d)
    if (is.list(pv)) {
      # Several terms on one factor, e.g. (x || g): lme4 gives one array per term; assemble
      # the block-diagonal nc x nc x levels array (lme4 reports no cross-term blocks).
      full <- array(0, c(nc, nc, nl))
      off <- 0L
      for (a in pv) {
        k <- dim(a)[1]
        full[off + seq_len(k), off + seq_len(k), ] <- a
        off <- off + k
      }
      pv <- full
    }
    list(factor = f, dim = as.integer(dim(pv)), values = as.vector(pv))
  })
}

# The result fields that can be left out of the fit's result and fetched from the live merMod
# when first read (embedded transport): each computed by the same code either way.
.mb_deferrable <- c("cond_var", "fitted", "residuals")

.mb_mer_field <- function(fit, name) {
  switch(name,
    cond_var = .mb_cond_var(fit),
    fitted = unname(as.numeric(stats::fitted(fit))),
    residuals = unname(as.numeric(stats::residuals(fit))),
    stop(sprintf("no deferred field '%s'", name))
  )
}

# fit.<field> of an embedded fit, read for the first time.
mb_mer_field <- function(fit, name) {
  .mb_capture(.mb_mer_field(fit, as.character(name)))
}

# defer: names among .mb_deferrable left out (fetched later by mb_mer_field); cond_var = FALSE:
# no conditional variances at all (an empty list).
.mb_extract_mer <- function(fit, glmm, cond_var = TRUE, defer = character(0)) {
  fam <- stats::family(fit)
  reml <- !glmm && lme4::isREML(fit)
  ll <- stats::logLik(fit)
  oi <- fit@optinfo
  X <- lme4::getME(fit, "X")
  vc <- as.data.frame(lme4::VarCorr(fit))
  out <- list(
    family = fam$family, link = fam$link, reml = reml,
    fixef = .mb_nv(lme4::fixef(fit)),
    vcov = .mb_mat(as.matrix(stats::vcov(fit))),
    theta = .mb_nv(lme4::getME(fit, "theta")),
    varcorr = list(grp = as.character(vc$grp), var1 = as.character(vc$var1),
                   var2 = as.character(vc$var2), vcov = as.numeric(vc$vcov),
                   sdcor = as.numeric(vc$sdcor)),
    sigma = as.numeric(stats::sigma(fit)),
    ranef = .mb_ranef(fit),
    loglik = as.numeric(ll), df = as.integer(attr(ll, "df")),
    deviance = as.numeric(if (reml) stats::deviance(fit, REML = FALSE) else stats::deviance(fit)),
    reml_criterion = if (reml) as.numeric(lme4::REMLcrit(fit)) else NULL,
    aic = as.numeric(stats::AIC(fit)), bic = as.numeric(stats::BIC(fit)),
    nobs = as.integer(stats::nobs(fit)),
    ngrps = .mb_nv(vapply(lme4::ngrps(fit), as.integer, 1L)),
    singular = lme4::isSingular(fit),
    nagq = as.integer(if (glmm) fit@devcomp$dims[["nAGQ"]] else 1L),
    dropped_columns = as.character(names(attr(X, "col.dropped"))),
    optinfo = list(
      optimizer = as.character(oi$optimizer),
      code = as.integer(oi$conv$opt),
      message = as.character(if (is.null(oi$message)) "" else oi$message),
      feval = as.integer(if (is.null(oi$feval)) NA else oi$feval),
      warnings = as.character(unlist(oi$warnings)),
      lme4_messages = as.character(unlist(oi$conv$lme4$messages)),
      lme4_code = as.integer(unlist(oi$conv$lme4$code)),
      # calc.derivs' finite-difference gradient and Hessian (glmer: over theta and beta)
      gradient = if (is.null(oi$derivs)) NULL else as.numeric(oi$derivs$gradient),
      hessian = if (is.null(oi$derivs)) NULL else .mb_mat(oi$derivs$Hessian)
    )
  )
  defer <- intersect(as.character(unlist(defer)), .mb_deferrable)
  if (identical(cond_var, FALSE)) {
    out$cond_var <- list()
    defer <- setdiff(defer, "cond_var")
  }
  for (name in setdiff(.mb_deferrable, names(out))) {
    if (!(name %in% defer)) out[[name]] <- .mb_mer_field(fit, name)
  }
  out$deferred <- as.character(defer)
  if (glmm) {
    # Our own extra call: its "vcov ... from finite-difference Hessian and from RX differ"
    # warning is not one the user's glmer() call would give, so it is not reported.
    out$vcov_rx <- .mb_mat(as.matrix(suppressWarnings(stats::vcov(fit, use.hessian = FALSE))))
  }
  out$versions <- .mb_versions()
  out
}

# keep_fit = TRUE adds the merMod itself as `fit` (embedded transport: for predict() and the
# deferred fields); defer: fields left out, fetched from `fit` when first read (mb_mer_field).
mb_lmer <- function(formula, data, REML = TRUE, weights_col = NULL, offset_col = NULL,
                    control = list(), keep_fit = FALSE, defer = character(0)) {
  .mb_capture({
    fml <- .mb_formula(formula)
    ctrl <- .mb_lmer_control(control)
    fit <- eval(.mb_mer_call(FALSE, weights_col, offset_col, start = control$start))
    out <- .mb_extract_mer(fit, glmm = FALSE, cond_var = control$cond_var,
                           defer = if (isTRUE(keep_fit)) defer else character(0))
    if (isTRUE(keep_fit)) out$fit <- fit
    out
  })
}

mb_glmer <- function(formula, data, family = "binomial", link = NULL, nAGQ = 1L,
                     weights_col = NULL, offset_col = NULL, control = list(),
                     keep_fit = FALSE, defer = character(0), nb_theta = NULL) {
  .mb_capture({
    fml <- .mb_formula(formula)
    fam <- .mb_family(family, link, nb_theta)
    nAGQ <- as.integer(nAGQ)
    ctrl <- .mb_glmer_control(control)
    fit <- eval(.mb_mer_call(TRUE, weights_col, offset_col))
    out <- .mb_extract_mer(fit, glmm = TRUE, cond_var = control$cond_var,
                           defer = if (isTRUE(keep_fit)) defer else character(0))
    out$tol_pwrss <- as.numeric(ctrl$tolPwrss)  # the deviance function's PIRLS tolerance
    if (!is.null(nb_theta)) out$nb_theta <- as.numeric(lme4::getME(fit, "glmer.nb.theta"))
    if (isTRUE(keep_fit)) out$fit <- fit
    out
  })
}

# lme4::glmer.nb: θ of the negative binomial estimated (initial poisson glmer, theta.ml, then
# optimize() over log θ of -2 logLik of refits); the merMod is a glmer at the final θ.
mb_glmer_nb <- function(formula, data, link = NULL, nAGQ = 1L, weights_col = NULL,
                        offset_col = NULL, control = list(), keep_fit = FALSE,
                        defer = character(0)) {
  .mb_capture({
    fml <- .mb_formula(formula)
    nAGQ <- as.integer(nAGQ)
    ctrl <- .mb_glmer_control(control)
    cl <- quote(lme4::glmer.nb(formula = fml, data = data, nAGQ = nAGQ, control = ctrl))
    if (!is.null(weights_col)) cl$weights <- as.name(.mb_col(weights_col))
    if (!is.null(offset_col)) cl$offset <- as.name(.mb_col(offset_col))
    fit <- eval(cl)
    out <- .mb_extract_mer(fit, glmm = TRUE, cond_var = control$cond_var,
                           defer = if (isTRUE(keep_fit)) defer else character(0))
    out$tol_pwrss <- as.numeric(ctrl$tolPwrss)
    out$nb_theta <- as.numeric(lme4::getME(fit, "glmer.nb.theta"))
    out$nb_evals <- as.integer(attr(fit, "nevals"))
    if (isTRUE(keep_fit)) out$fit <- fit
    out
  })
}

# predict.merMod. re_form: NULL = all random terms; re_none = TRUE: none (NA); otherwise a
# formula string of random terms (validated by the Python side).
mb_predict <- function(fit, newdata = NULL, re_form = NULL, re_none = FALSE,
                       allow_new_levels = FALSE, type = "link") {
  .mb_capture({
    rf <- if (isTRUE(re_none)) NA else if (is.null(re_form)) NULL else .mb_formula(re_form)
    type <- match.arg(type, c("link", "response"))
    unname(as.numeric(stats::predict(fit, newdata = newdata, re.form = rf,
                                     allow.new.levels = isTRUE(allow_new_levels),
                                     type = type)))
  })
}

# Subprocess transport: refit (deterministic) in this process, then predict.
mb_predict_refit <- function(model, fit_args, data, newdata = NULL, predict_args = list()) {
  fit_args$data <- data
  fit_args$keep_fit <- TRUE
  r <- do.call(if (model == "glmer") mb_glmer else mb_lmer, fit_args)
  if (!r$ok) return(r)
  predict_args$fit <- r$value$fit
  if (!is.null(newdata)) predict_args$newdata <- newdata
  p <- do.call(mb_predict, predict_args)
  p$messages <- c(r$messages, p$messages)
  p
}

# Deviance functions (devFunOnly = TRUE), returned as R closures for the embedded transport.
mb_lmer_devfun <- function(formula, data, REML = TRUE, weights_col = NULL, offset_col = NULL) {
  .mb_capture({
    fml <- .mb_formula(formula)
    ctrl <- lme4::lmerControl()
    eval(.mb_mer_call(FALSE, weights_col, offset_col, dev_fun_only = TRUE))
  })
}

# glmer with nAGQ >= 1 and devFunOnly runs stage 1 and returns the stage-2 function of
# c(theta, beta); with nAGQ = 0 it returns the stage-1 function of theta.
mb_glmer_devfun <- function(formula, data, family = "binomial", link = NULL, nAGQ = 1L,
                            weights_col = NULL, offset_col = NULL, control = list(),
                            nb_theta = NULL) {
  .mb_capture({
    fml <- .mb_formula(formula)
    fam <- .mb_family(family, link, nb_theta)
    nAGQ <- as.integer(nAGQ)
    ctrl <- .mb_glmer_control(control)
    eval(.mb_mer_call(TRUE, weights_col, offset_col, dev_fun_only = TRUE))
  })
}

mb_call_devfun <- function(devfun, params) {
  .mb_capture(as.numeric(devfun(as.numeric(params))))
}

mb_lmer_objective <- function(formula, data, theta, REML = TRUE, weights_col = NULL,
                              offset_col = NULL) {
  d <- mb_lmer_devfun(formula, data, REML, weights_col, offset_col)
  if (!d$ok) return(d)
  r <- mb_call_devfun(d$value, theta)
  r$messages <- c(d$messages, r$messages)
  r
}

mb_glmer_objective <- function(formula, data, params, family = "binomial", link = NULL,
                               nAGQ = 1L, weights_col = NULL, offset_col = NULL,
                               control = list(), nb_theta = NULL) {
  d <- mb_glmer_devfun(formula, data, family, link, nAGQ, weights_col, offset_col, control,
                       nb_theta)
  if (!d$ok) return(d)
  r <- mb_call_devfun(d$value, params)
  r$messages <- c(d$messages, r$messages)
  r
}

# ---------------------------------------------------------------------------------------------
# bayesglm

# arm::bayesglm with the dispersion held at 1 (our `dispersion = phi` extension passes prior
# weights w / phi). arm fixes the dispersion only for families *named* poisson/binomial
# (bayesglm_spec.md section 12 point 1 relabels the family). Relabelling also switches off
# arm's gaussian prior scaling (2 sd(y), x-scaling only in iteration 1), so instead we run
# copies of bayesglm/bayesglm.fit whose `%in%` reports every family as fixed-dispersion:
# those are its only two uses in bayesglm.fit (the start value and the EM update).
.mb_fixed_dispersion_bayesglm <- function() {
  if (!is.null(.mb$bayesglm_fixed)) return(.mb$bayesglm_fixed)
  ns <- asNamespace("arm")
  env <- new.env(parent = ns)
  env[["%in%"]] <- function(x, table) {
    if (identical(table, c("poisson", "binomial"))) return(rep(TRUE, length(x)))
    base::match(x, table, nomatch = 0L) > 0L
  }
  fitfun <- get("bayesglm.fit", envir = ns)
  environment(fitfun) <- env
  env$bayesglm.fit <- fitfun
  top <- get("bayesglm", envir = ns)
  environment(top) <- env
  .mb$bayesglm_fixed <- top
  top
}

mb_bayesglm <- function(formula, data, family = "gaussian", link = NULL,
                        weights_col = NULL, offset_col = NULL,
                        prior_mean = 0, prior_scale = NULL, prior_df = 1,
                        prior_mean_for_intercept = 0, prior_scale_for_intercept = NULL,
                        prior_df_for_intercept = 1, min_prior_scale = 1e-12, scaled = TRUE,
                        drop_baseline = TRUE, maxit = 100L, epsilon = 1e-8,
                        dispersion = NULL) {
  .mb_capture({
    suppressPackageStartupMessages(requireNamespace("arm", quietly = TRUE))
    fml <- .mb_formula(formula)
    fam <- .mb_family(family, link)
    fixed <- !is.null(dispersion)
    if (fixed) {
      phi <- as.numeric(dispersion)
      if (!is.finite(phi) || phi <= 0) stop("dispersion must be a positive number")
      if (is.null(weights_col)) {
        w0 <- rep(1, nrow(data))
        weights_col <- .mb_free_name(".mb_weights", names(data))
      } else {
        w0 <- data[[weights_col]]
      }
      data[[weights_col]] <- w0 / phi
    }
    fn <- if (fixed) .mb_fixed_dispersion_bayesglm() else arm::bayesglm
    cl <- quote(fn(formula = fml, data = data, family = fam,
                   prior.mean = prior_mean, prior.scale = prior_scale, prior.df = prior_df,
                   prior.mean.for.intercept = prior_mean_for_intercept,
                   prior.scale.for.intercept = prior_scale_for_intercept,
                   prior.df.for.intercept = prior_df_for_intercept,
                   min.prior.scale = min_prior_scale, scaled = scaled,
                   drop.baseline = drop_baseline, maxit = maxit,
                   control = list(epsilon = epsilon)))
    if (!is.null(weights_col)) cl$weights <- as.name(.mb_col(weights_col))
    if (!is.null(offset_col)) cl$offset <- as.name(.mb_col(offset_col))
    maxit <- as.integer(maxit)
    # drop.baseline = FALSE: `contrasts<-` looks arm's contr.bayes.* up along the search path,
    # so arm must be attached, not only loaded (added by the bayesglm python-engine work).
    if (!isTRUE(drop_baseline) && !("package:arm" %in% search())) {
      suppressPackageStartupMessages(attachNamespace("arm"))
    }
    fit <- eval(cl)
    # summary.glm: Pearson dispersion (SEs reported by summary/vcov/se.coef); display() uses
    # fit$dispersion. With a fixed phi both are phi: the fit ran at dispersion 1 with weights
    # w / phi, so cov.unscaled is already the posterior covariance at phi.
    s <- if (fixed) summary(fit, dispersion = 1) else summary(fit)
    s_disp <- summary(fit, dispersion = if (fixed) 1 else fit$dispersion)
    cf <- stats::coef(fit)
    list(
      family = fam$family, link = fam$link,
      coef = .mb_nv(cf),
      se = .mb_nv(s$coefficients[, 2]),
      se_display = .mb_nv(s_disp$coefficients[, 2]),
      vcov = .mb_mat(s$cov.scaled),
      dispersion = if (fixed) phi else as.numeric(fit$dispersion),
      dispersion_pearson = if (fixed) phi else as.numeric(s$dispersion),
      # with a fixed phi the fit saw weights w / phi, so its deviances are scaled by 1 / phi
      deviance = as.numeric(fit$deviance) * (if (fixed) phi else 1),
      null_deviance = as.numeric(fit$null.deviance) * (if (fixed) phi else 1),
      aic = as.numeric(fit$aic),
      df_residual = as.integer(fit$df.residual),
      iter = as.integer(fit$iter),
      converged = isTRUE(fit$converged),
      prior_mean = as.numeric(fit$prior.mean),
      prior_scale = as.numeric(fit$prior.scale),
      prior_df = as.numeric(fit$prior.df),
      prior_sd = as.numeric(fit$prior.sd),
      fitted = unname(as.numeric(stats::fitted(fit))),
      nobs = as.integer(stats::nobs(fit)),
      fixed_dispersion = fixed,
      versions = .mb_versions()
    )
  })
}

# ---------------------------------------------------------------------------------------------
# Data sets

mb_dataset <- function(name, package = "lme4") {
  .mb_capture({
    if (!is.character(name) || length(name) != 1L || !grepl("^[A-Za-z][A-Za-z0-9._]*$", name)) {
      stop("invalid data set name")
    }
    e <- new.env()
    utils::data(list = name, package = package, envir = e)
    d <- as.data.frame(get(name, envir = e))
    cols <- lapply(names(d), function(nm) {
      x <- d[[nm]]
      if (is.factor(x)) {
        list(kind = if (is.ordered(x)) "ordered" else "factor", values = as.integer(x),
             levels = levels(x))
      } else if (is.logical(x)) {
        list(kind = "logical", values = as.integer(x), levels = character(0))
      } else if (is.integer(x)) {
        list(kind = "integer", values = x, levels = character(0))
      } else if (is.numeric(x)) {
        list(kind = "double", values = as.numeric(x), levels = character(0))
      } else {
        list(kind = "string", values = as.character(x), levels = character(0))
      }
    })
    list(names = names(d), nrow = nrow(d), columns = cols)
  })
}

# What R received: per column its class, levels, NA positions and values (for tests/doctor).
mb_describe_df <- function(data) {
  .mb_capture({
    lapply(names(data), function(nm) {
      x <- data[[nm]]
      list(name = nm, class = class(x), type = typeof(x),
           levels = if (is.factor(x)) levels(x) else character(0),
           na = which(is.na(x)),
           values = if (is.factor(x)) as.character(x) else as.vector(x))
    })
  })
}

# Rows and columns R received (transfer benchmarks; loads no package).
mb_ping <- function(data) {
  .mb_capture(c(nrow(data), ncol(data)))
}

# ---------------------------------------------------------------------------------------------
# Tests and degrees of freedom (issue 13): lmerTest's summary table and anova(), with
# Satterthwaite's or Kenward-Roger's df (pbkrtest), on the fit itself (never refitted here).
mb_tests <- function(fit, kind = "coef_table", ddf = "Satterthwaite", type = 3L) {
  .mb_capture({
    for (p in c("lmerTest", if (ddf == "Kenward-Roger") "pbkrtest")) {
      if (!requireNamespace(p, quietly = TRUE)) {
        stop(sprintf("R package %s is required for these tests (apt-get install r-cran-%s)",
                     p, tolower(p)))
      }
    }
    # lmerTest differentiates lme4's deviance function; rebuilt here from the merMod's own
    # pieces (update() would re-evaluate the call, whose data live in another frame)
    rt <- lme4::getME(fit, c("Zt", "theta", "Lambdat", "Lind", "lower", "flist", "cnms", "Gp"))
    devfun <- lme4::mkLmerDevfun(stats::model.frame(fit), lme4::getME(fit, "X"), rt,
                                 REML = lme4::isREML(fit), control = lme4::lmerControl())
    m <- lmerTest:::as_lmerModLT(fit, devfun)
    if (kind == "coef_table") {
      tab <- stats::coef(lmerTest:::summary.lmerModLmerTest(m, ddf = ddf))
      list(names = rownames(tab), estimate = unname(tab[, "Estimate"]),
           std_error = unname(tab[, "Std. Error"]), df = unname(tab[, "df"]),
           statistic = unname(tab[, "t value"]), p_value = unname(tab[, "Pr(>|t|)"]))
    } else {
      a <- lmerTest:::anova.lmerModLmerTest(m, type = as.integer(type), ddf = ddf)
      list(names = rownames(a), sum_sq = a[["Sum Sq"]], mean_sq = a[["Mean Sq"]],
           num_df = as.numeric(a[["NumDF"]]), den_df = a[["DenDF"]],
           f_value = a[["F value"]], p_value = a[["Pr(>F)"]])
    }
  })
}

# Subprocess transport: refit (deterministic) in this process, then test.
mb_tests_refit <- function(fit_args, data, tests_args = list()) {
  fit_args$data <- data
  fit_args$keep_fit <- TRUE
  r <- do.call(mb_lmer, fit_args)
  if (!r$ok) return(r)
  tests_args$fit <- r$value$fit
  t <- do.call(mb_tests, tests_args)
  t$messages <- c(r$messages, t$messages)
  t
}

# allFit (mixbridge.allfit): lme4's own optimizers on the same model, every optimum scored by
# lme4's deviance function for that model (the one R fits' objective() evaluates).
#
# The model is fitted once with lme4's defaults in an environment of its own (allFit refits
# with update(), which evaluates the call there and assigns `ctrl` there), then allFit runs
# every optimizer of its table; allFit itself drops nmkbw without dfoptim and optimx without
# optimx, which we report as `skipped`. (The whole table always runs: lme4 1.1-31's allFit
# cannot take a shorter meth.tab while optimx is missing, it indexes it by meth.tab.0's rows.)
# `score`: further parameter vectors (flattened, `n_par` each) to evaluate with the same
# deviance function.
mb_allfit <- function(model, formula, data, REML = TRUE, family = "gaussian", link = NULL,
                      nAGQ = 1L, weights_col = NULL, offset_col = NULL, score = NULL,
                      n_par = 0L, nb_theta = NULL) {
  .mb_capture({
    glmm <- identical(model, "glmer")
    env <- new.env(parent = globalenv())
    env$data <- data
    env$fml <- .mb_formula(formula)
    environment(env$fml) <- env
    env$REML <- isTRUE(REML)
    env$nAGQ <- as.integer(nAGQ)
    if (glmm) env$fam <- .mb_family(family, link, nb_theta)
    cl <- .mb_mer_call(glmm, weights_col, offset_col)
    cl$control <- NULL
    # values, not symbols, in the call: when a refit fails, update() evaluates the call again
    # elsewhere and would report the missing symbol instead of the optimizer's error
    cl$formula <- env$fml
    cl$data <- data
    if (glmm) {
      cl$family <- env$fam
      cl$nAGQ <- env$nAGQ
    } else {
      cl$REML <- env$REML
    }
    fit <- suppressWarnings(suppressMessages(eval(cl, env)))
    skipped <- character(0)
    if (!requireNamespace("dfoptim", quietly = TRUE)) {
      skipped <- c(skipped, "nmkbw: package 'dfoptim' is not installed")
    }
    if (!requireNamespace("optimx", quietly = TRUE)) {
      skipped <- c(skipped, "optimx.L-BFGS-B: package 'optimx' is not installed")
    }
    # allFit's requireNamespace("optimx") writes its failure to stderr: reported as `skipped`
    utils::capture.output(
      af <- suppressWarnings(suppressMessages(lme4::allFit(fit, verbose = FALSE))),
      type = "message"
    )
    dev <- if (glmm) {
      mb_glmer_devfun(formula, data, family, link, nAGQ, weights_col, offset_col,
                      nb_theta = nb_theta)
    } else {
      mb_lmer_devfun(formula, data, REML, weights_col, offset_col)
    }
    if (!dev$ok) stop(dev$error$text)
    d <- dev$value
    with_beta <- glmm && as.integer(nAGQ) > 0L
    one <- function(name) {
      f <- af[[name]]
      secs <- as.numeric(attr(f, "time")[["elapsed"]])
      if (inherits(f, "error")) {
        return(list(name = name, ok = FALSE, error = conditionMessage(f), seconds = secs))
      }
      th <- unname(lme4::getME(f, "theta"))
      be <- lme4::fixef(f)
      crit <- as.numeric(d(if (with_beta) c(th, unname(be)) else th))
      conv <- f@optinfo$conv$lme4$messages
      list(
        name = name, ok = TRUE, theta = as.numeric(th), beta = .mb_nv(be), criterion = crit,
        messages = as.character(c(unlist(f@optinfo$warnings), unlist(conv))),
        opt_code = as.numeric(f@optinfo$conv$opt), seconds = secs
      )
    }
    scores <- numeric(0)
    if (!is.null(score) && length(score) > 0L) {
      m <- matrix(as.numeric(score), ncol = as.integer(n_par), byrow = TRUE)
      scores <- apply(m, 1L, function(p) as.numeric(d(p)))
    }
    list(fits = lapply(names(af), one), skipped = skipped, scores = as.numeric(scores),
         versions = .mb_versions())
  })
}

# ---------------------------------------------------------------------------------------------
# Inference (mixbridge/inference): lme4's confint.merMod and anova.merMod on lme4's own fit of
# the model (refitted here: deterministic, and both transports work the same way).

.mb_refit <- function(model, formula, data, REML = TRUE, family = "binomial", link = NULL,
                      nAGQ = 1L, weights_col = NULL, offset_col = NULL, control = list()) {
  fml <- .mb_formula(formula)
  glmm <- model == "glmer"
  cl <- .mb_mer_call(glmm, weights_col, offset_col)
  # control and family go into the call as values: bootMer's refit evaluates them again
  # from the call, where this function's variables are gone
  cl$control <- if (glmm) .mb_glmer_control(control) else .mb_lmer_control(control)
  if (glmm) {
    cl$family <- .mb_family(family, link)
    cl$nAGQ <- as.integer(nAGQ)
  } else {
    cl$REML <- isTRUE(REML)
  }
  eval(cl)
}

# method: "wald", "profile" or "boot"; parm: parameter names (NULL: all); seed: set.seed first.
mb_confint_refit <- function(model, fit_args, data, method = "profile", level = 0.95,
                             parm = NULL, nsim = 1000L, seed = NULL) {
  .mb_capture({
    fit <- do.call(.mb_refit, c(list(model = model, data = data), fit_args))
    m <- c(wald = "Wald", profile = "profile", boot = "boot")[[method]]
    if (!is.null(seed)) set.seed(as.integer(seed))
    if (m == "boot") {
      # what confint.merMod(method = "boot") does (bootMer with these parameters, then
      # boot.ci percentile intervals), in two steps so the replicates come back too
      glmm <- !lme4::isLMM(fit)
      fun <- function(x) {
        th <- lme4::getME(x, "theta")
        nv <- lengths(x@cnms)
        sv <- if (lme4::isLMM(x)) lme4:::Cv_to_Sv(th, nv, s = stats::sigma(x))
              else lme4:::Cv_to_Sv(th, nv)
        c(sv, lme4::fixef(x))
      }
      bb <- suppressMessages(lme4::bootMer(fit, fun, nsim = as.integer(nsim)))
      ci <- stats::confint(bb, type = "perc", level = as.numeric(level))
      nms <- c(sprintf(".sig%02d", seq_along(lme4::getME(fit, "theta"))),
               if (!glmm) ".sigma", names(lme4::fixef(fit)))
      list(names = nms, lower = as.numeric(ci[, 1]), upper = as.numeric(ci[, 2]),
           replicates = as.numeric(bb$t), n_rep = nrow(bb$t))
    } else {
      args <- list(fit, level = as.numeric(level), method = m, oldNames = TRUE)
      if (!is.null(parm) && m != "Wald") args$parm <- as.character(parm)
      ci <- suppressMessages(do.call(stats::confint, args))
      list(names = rownames(ci), lower = as.numeric(ci[, 1]), upper = as.numeric(ci[, 2]))
    }
  })
}

# models: a named list (the row names) of fit_args lists, each with its `model`.
mb_anova_refit <- function(models, data, refit = TRUE) {
  .mb_capture({
    mods <- lapply(models, function(a) do.call(.mb_refit, c(list(data = data), a)))
    a <- suppressMessages(do.call(stats::anova, c(unname(mods), list(
      refit = isTRUE(refit), model.names = names(models)))))
    c(list(names = rownames(a)), lapply(as.list(a), as.numeric))
  })
}
