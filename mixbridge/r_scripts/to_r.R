# mixbridge R side, part 2: a fit's parameters -> a real lme4 merMod, without optimizing.
#
# Sourced by mixbridge/bridge/to_r.py into a child of the environment holding mixbridge.R, so it
# uses that file's helpers (.mb_capture, .mb_formula, .mb_family) and keeps its contract: every
# entry point returns list(ok, value, messages, error) and never throws.
#
# The merMod is assembled the way lmer()/glmer() assemble theirs (lme4's R/lmer.R), with the
# optimizer replaced by the given parameters:
#   lFormula/glFormula -> mkLmerDevfun/mkGlmerDevfun (glmer: stage 1 at theta, then
#   updateGlmerDevfun) -> one deviance evaluation at the parameters -> mkMerMod.
# Everything the object reports (logLik, ranef, R_X, condVar, fitted values) is computed by lme4
# from the state that evaluation leaves behind; only theta and beta are taken as given.

# The family as a call, e.g. binomial(link = "logit"): the merMod's call stays evaluable, so
# update(), lmerTest and emmeans can re-run or inspect it.
# negative.binomial: MASS::negative.binomial(theta = <the fit's NB theta>).
.mb_family_call <- function(family, link, nb_theta = NULL) {
  fam <- .mb_family(family, link, nb_theta)
  if (identical(family, "negative.binomial")) {
    return(as.call(list(quote(MASS::negative.binomial), theta = as.numeric(nb_theta))))
  }
  as.call(list(as.name(family), link = fam$link))
}

# The model-building call lFormula/glFormula (and the call stored in the merMod), with the data
# and the weights/offset columns as symbols that resolve in `home`.
.mb_model_call <- function(fun, fml, glmm, family_call, REML, nAGQ, weights_col, offset_col) {
  cl <- if (glmm) {
    call(fun, formula = fml, data = quote(mixbridge_data), family = family_call)
  } else {
    call(fun, formula = fml, data = quote(mixbridge_data), REML = REML)
  }
  if (glmm && !is.null(nAGQ)) cl$nAGQ <- nAGQ
  if (!is.null(weights_col)) cl$weights <- as.name(.mb_col(weights_col))
  if (!is.null(offset_col)) cl$offset <- as.name(.mb_col(offset_col))
  cl
}

mb_as_mermod <- function(model, formula, data, theta, beta = NULL, stage1_theta = NULL,
                         REML = TRUE,
                         family = "binomial", link = NULL, nAGQ = 1L,
                         weights_col = NULL, offset_col = NULL,
                         gradient = NULL, hessian = NULL, optimizer = "mixbridge",
                         nb_theta = NULL) {
  .mb_capture({
    glmm <- identical(model, "glmer")
    # The data live in the formula's environment under one name, so the merMod's call can be
    # evaluated again (update(), lmerTest's as_lmerModLmerTest, emmeans' recover_data).
    home <- new.env(parent = globalenv())
    home$mixbridge_data <- data
    fml <- .mb_formula(formula)
    environment(fml) <- home
    theta <- as.numeric(theta)
    nAGQ <- as.integer(nAGQ)
    fam_call <- if (glmm) .mb_family_call(family, link, nb_theta) else NULL
    build <- .mb_model_call("lFormula", fml, glmm, fam_call, isTRUE(REML), NULL,
                            weights_col, offset_col)
    build[[1]] <- if (glmm) quote(lme4::glFormula) else quote(lme4::lFormula)
    mod <- eval(build, home)
    mc <- .mb_model_call("lmer", mod$formula, glmm, fam_call, isTRUE(REML), nAGQ,
                         weights_col, offset_col)
    mc[[1]] <- if (glmm) quote(lme4::glmer) else quote(lme4::lmer)
    mod$formula <- NULL
    if (length(theta) != length(mod$reTrms$theta)) {
      stop(sprintf("theta has %d values; this model has %d", length(theta),
                   length(mod$reTrms$theta)))
    }
    if (!glmm) {
      devfun <- do.call(lme4::mkLmerDevfun, c(mod, list(control = lme4::lmerControl())))
      par <- theta
      fval <- devfun(par)
      ctrl_conv <- lme4::lmerControl()$checkConv
    } else {
      ctrl <- lme4::glmerControl()
      beta <- as.numeric(beta)
      if (length(beta) != ncol(mod$X)) {
        stop(sprintf("beta has %d values; the model matrix has %d columns", length(beta),
                     ncol(mod$X)))
      }
      # mkGlmerDevfun's environment hangs off its caller's frame and its closures call lme4's
      # internals (GHrule) by name: call it from a frame inside lme4's namespace, as glmer()
      devfun <- do.call(lme4::mkGlmerDevfun, c(mod, list(control = ctrl, nAGQ = 0L)),
                        envir = new.env(parent = asNamespace("lme4")))
      rho <- environment(devfun)
      rho$nAGQ <- nAGQ  # as optimizeGlmer's stage 1 leaves it
      par <- theta
      if (nAGQ == 0L) {
        fval <- devfun(par)
      } else {
        # Stage 2's PIRLS starts from the linear predictor stage 1 ended at (lp0), and lme4's
        # Laplace value depends on that start at the PIRLS tolerance (its last Cholesky
        # factor is from the start of the last iteration: 5.6e-4 on cbpp). Ending stage 1
        # where the fit's stage 1 ended reproduces the fit's own evaluation.
        devfun(if (is.null(stage1_theta)) theta else as.numeric(stage1_theta))
        devfun <- lme4::updateGlmerDevfun(devfun, mod$reTrms, nAGQ = nAGQ)
        rho <- environment(devfun)
        par <- c(theta, beta)
        fval <- devfun(par)
        rho$resp$setOffset(rho$baseOffset)  # as optimizeGlmer leaves it after stage 2
      }
      ctrl_conv <- ctrl$checkConv
    }
    opt <- list(par = par, fval = fval, conv = 0L, feval = NA_integer_,
                message = "parameters of a mixbridge fit; not optimized in R")
    attr(opt, "optimizer") <- optimizer
    attr(opt, "control") <- list()
    attr(opt, "warnings") <- list()
    lme4conv <- NULL
    if (!is.null(gradient) && !is.null(hessian)) {
      h <- matrix(as.numeric(hessian), length(par), length(par))
      derivs <- list(gradient = as.numeric(gradient), Hessian = h)
      attr(opt, "derivs") <- derivs
      lme4conv <- lme4::checkConv(derivs, par, ctrl = ctrl_conv,
                                  lbound = environment(devfun)$lower)
    }
    lme4::mkMerMod(environment(devfun), opt, mod$reTrms, fr = mod$fr, mc = mc,
                   lme4conv = lme4conv)
  })
}

# What the Python side checks before handing the object over: lme4's criterion at the given
# parameters and the names lme4 gave theta and beta.
mb_mermod_check <- function(fit) {
  .mb_capture({
    cmp <- fit@devcomp$cmp
    list(fval = as.numeric(if (lme4::isREML(fit)) cmp[["REML"]] else cmp[["dev"]]),
         theta_names = names(lme4::getME(fit, "theta")),
         beta_names = colnames(lme4::getME(fit, "X")))
  })
}
