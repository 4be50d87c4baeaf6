# Run one mixbridge request in a separate R process:
#
#   Rscript --vanilla mixbridge_cli.R request.json response.json
#
# request.json: {"function": "mb_lmer", "args": {...}, "data": null or
#   {"file": "<binary file>", "nrow": n, "columns": [{"name", "kind", "levels"}]}}
# Column kinds: double (float64), integer/logical/factor/ordered/string (int32 codes, NA =
# INT_MIN, which is R's NA_integer_), all little-endian, one after another in `file`.
# response.json: the entry point's result list; every double vector is written to
# response.json.bin (float64, little-endian) and replaced by {"__bin__": [offset, length]},
# so numbers cross exactly (NA, NaN, Inf included) and large vectors stay fast.

.mb_cli_main <- function(argv) {
  if (length(argv) != 2L) {
    cat("usage: Rscript mixbridge_cli.R request.json response.json\n", file = stderr())
    quit(status = 2L)
  }
  all_args <- commandArgs(trailingOnly = FALSE)
  script <- sub("^--file=", "", all_args[grep("^--file=", all_args)][1])
  source(file.path(dirname(normalizePath(script)), "mixbridge.R"))
  req <- jsonlite::fromJSON(argv[[1]], simplifyVector = TRUE, simplifyDataFrame = FALSE,
                            simplifyMatrix = FALSE)
  fn_name <- req[["function"]]
  allowed <- c("mb_lmer", "mb_glmer", "mb_glmer_nb", "mb_bayesglm", "mb_lmer_objective",
               "mb_glmer_objective", "mb_dataset", "mb_versions", "mb_describe_df",
               "mb_ping", "mb_predict_refit", "mb_tests_refit", "mb_allfit",
               "mb_confint_refit", "mb_anova_refit")
  if (!(fn_name %in% allowed)) stop("unknown function ", fn_name)
  args <- req$args
  if (is.null(args)) args <- list()
  args <- .mb_cli_unbin(args, req$args_file)
  if (!is.null(req$data)) {
    args$data <- .mb_cli_read_data(req$data)
  }
  if (!is.null(req$newdata)) {
    args$newdata <- .mb_cli_read_data(req$newdata)
  }
  res <- do.call(get(fn_name), args)
  .mb_cli_write(res, argv[[2]])
  invisible(NULL)
}

# Doubles in the request arrive as {"__bin__": [offset, length]} into args_file.
.mb_cli_unbin <- function(args, path) {
  if (is.null(path) || !file.exists(path)) return(args)
  doubles <- readBin(path, "double", n = file.size(path) / 8, size = 8L, endian = "little")
  unbin <- function(x) {
    if (is.list(x) && identical(names(x), "__bin__")) {
      off <- x[[1]][1]
      doubles[off + seq_len(x[[1]][2])]
    } else if (is.list(x)) {
      nm <- names(x)
      y <- lapply(x, unbin)
      names(y) <- nm
      y
    } else {
      x
    }
  }
  unbin(args)
}

.mb_cli_read_data <- function(spec) {
  n <- as.integer(spec$nrow)
  con <- file(spec$file, "rb")
  on.exit(close(con))
  cols <- list()
  kinds <- character(0)
  levels <- list()
  nms <- character(0)
  for (j in seq_along(spec$columns)) {
    cs <- spec$columns[[j]]
    x <- if (cs$kind == "double") {
      readBin(con, "double", n = n, size = 8L, endian = "little")
    } else {
      readBin(con, "integer", n = n, size = 4L, endian = "little")
    }
    cols[[j]] <- x
    kinds[j] <- cs$kind
    levels[j] <- list(if (is.null(cs$levels)) character(0) else as.character(cs$levels))
    nms[j] <- cs$name
  }
  mb_make_df(cols, nms, kinds, levels, n)
}

.mb_cli_write <- function(res, path) {
  bin_path <- paste0(path, ".bin")
  con <- file(bin_path, "wb")
  state <- new.env()
  state$n <- 0
  binify <- function(x) {
    if (is.list(x)) {
      nm <- names(x)
      y <- lapply(x, binify)
      names(y) <- nm
      y
    } else if (is.double(x)) {
      off <- state$n
      writeBin(as.vector(x), con, size = 8L, endian = "little")
      state$n <- off + length(x)
      list(`__bin__` = c(off, length(x)))
    } else if (is.function(x)) {
      NULL
    } else {
      x
    }
  }
  out <- binify(res)
  close(con)
  txt <- jsonlite::toJSON(out, auto_unbox = FALSE, null = "null", na = "null", digits = NA)
  writeLines(txt, path, useBytes = TRUE)
}

.mb_cli_main(commandArgs(trailingOnly = TRUE))
