/* fuzz_jobfile.c -- libFuzzer target: a hostile job file (`key = value`
 * lines, config.c's nllm_job_config_parse_text).
 *
 * Whatever parses is checked (nllm_job_config_check), turned into JSON as
 * the catalog and checkpoints store it, dumped, loaded back and applied to
 * fresh defaults (nllm_job_config_from_json): the copy must equal the
 * original field by field (nllm_job_config_model_diff/_train_diff) and
 * check the same way. Built by tests/fuzz/run.sh.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "config.h"

#define FUZZ_NAME "fuzz_jobfile"
#include "fuzz_assert.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    nllm_job_config_t c, back;
    nllm_err_t err;
    nllm_job_config_defaults(&c);
    int rc = nllm_job_config_parse_text((const char *)data, size, "fuzz.job", &c, &err);
    if (rc < 0) {
        ASSERT(err.msg[0] && strlen(err.msg) < sizeof err.msg);
        return 0;
    }
    nllm_err_t cerr;
    int checked = nllm_job_config_check(&c, &cerr);

    json_t *j = nllm_job_config_to_json(&c);
    if (!j)
        fprintf(stderr, "fuzz_jobfile: a parsed config has no JSON form\n");
    ASSERT(j);
    char *text = json_dumps(j, JSON_COMPACT | JSON_REAL_PRECISION(17));
    json_decref(j);
    ASSERT(text);
    json_error_t je;
    json_t *j2 = json_loads(text, 0, &je);
    ASSERT(j2);
    nllm_job_config_defaults(&back);
    rc = nllm_job_config_from_json(j2, &back, &err);
    json_decref(j2);
    if (rc < 0)
        fprintf(stderr, "fuzz_jobfile: the JSON form does not load back: %s\n  %s\n", err.msg,
                text);
    ASSERT(rc == 0);
    char diff[2048];
    int nd = nllm_job_config_model_diff(&c.model, "parsed", &back.model, "json", diff,
                                        sizeof diff);
    if (nd == 0)
        nd = nllm_job_config_train_diff(&c, &back, diff, sizeof diff);
    if (nd)
        fprintf(stderr, "fuzz_jobfile: JSON round trip changed %s\n  %s\n", diff, text);
    ASSERT(nd == 0);
    nllm_err_t cerr2;
    ASSERT((nllm_job_config_check(&back, &cerr2) < 0) == (checked < 0));
    free(text);
    return 0;
}
