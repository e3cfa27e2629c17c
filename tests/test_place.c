/* test_place.c -- daemon/place.c, the placement rule of several jobs per
 * device, on made-up devices (GPUs need not exist): slots per device, the
 * least loaded device first, the GPU with the most free memory between
 * equals, a GPU without enough free memory skipped (the job waits), a job
 * no GPU could ever hold refused with a message, named devices and "cuda",
 * a device the daemon lacks (the job waits, as before). Jobs on several
 * devices: all ranks or none, each rank a GPU of its own (the best ones, as
 * one rank's pick), or all on the cpu in one slot; device lists in their
 * order; too few GPUs free (wait) or large enough (never, with why).
 * Suite: daemon.
 */
#include <stdio.h>
#include <string.h>

#include "place.h"
#include "testutil.h"

#define MIB ((uint64_t)1 << 20)
#define GIB ((uint64_t)1 << 30)

static int place(const nllmd_place_dev_t *d, int n, const char *want, int per, uint64_t need)
{
    char why[512] = "";
    return nllmd_place(d, n, want, per, need, why, sizeof why);
}

static void test_cpu_slots(void)
{
    nllmd_place_dev_t cpu[1] = {{"cpu", 0, 0, 0, 0, 0}};
    CHECK(place(cpu, 1, "", 1, 1 * GIB) == 0, "an idle cpu takes a job");
    cpu[0].jobs = 1;
    CHECK(place(cpu, 1, "", 1, 1 * GIB) == NLLMD_PLACE_WAIT, "one slot taken: wait");
    CHECK(place(cpu, 1, "", 2, 1 * GIB) == 0, "two slots, one taken: the second job runs");
    cpu[0].jobs = 2;
    CHECK(place(cpu, 1, "", 2, 1 * GIB) == NLLMD_PLACE_WAIT, "both slots taken: wait");
    CHECK(place(cpu, 1, "cpu", 2, 100 * GIB) == NLLMD_PLACE_WAIT,
          "the cpu's memory is not checked");
    cpu[0].jobs = 0;
    CHECK(place(cpu, 1, "cpu", 2, 100 * GIB) == 0, "the cpu takes any size");
}

static void test_fewest_jobs_then_free_memory(void)
{
    nllmd_place_dev_t g[3] = {{"cuda:0", 1, 1, 80 * GIB, 70 * GIB, 0},
                              {"cuda:1", 1, 0, 80 * GIB, 10 * GIB, 0},
                              {"cuda:2", 1, 0, 80 * GIB, 40 * GIB, 0}};
    CHECK(place(g, 3, "", 4, 1 * GIB) == 2,
          "fewest jobs first, then the most free memory (got %d)", place(g, 3, "", 4, 1 * GIB));
    g[2].jobs = 1;
    CHECK(place(g, 3, "", 4, 1 * GIB) == 1, "the only idle GPU wins over more free memory");
    g[1].jobs = 1;
    CHECK(place(g, 3, "", 4, 1 * GIB) == 0, "all equal in jobs: the most free memory");
    CHECK(place(g, 3, "cuda", 4, 1 * GIB) == 0, "\"cuda\" is any GPU");
    CHECK(place(g, 3, "cuda:1", 4, 1 * GIB) == 1, "a named device is kept");
    g[1].jobs = 4;
    CHECK(place(g, 3, "cuda:1", 4, 1 * GIB) == NLLMD_PLACE_WAIT,
          "a named device without a free slot: wait, even with other GPUs free");
    nllmd_place_dev_t eq[2] = {{"cuda:0", 1, 0, 80 * GIB, 50 * GIB, 0},
                               {"cuda:1", 1, 0, 80 * GIB, 50 * GIB, 0}};
    CHECK(place(eq, 2, "", 2, 1 * GIB) == 0, "a tie goes to the first listed");
}

static void test_memory(void)
{
    nllmd_place_dev_t g[2] = {{"cuda:0", 1, 0, 16 * GIB, 2 * GIB, 0},
                              {"cuda:1", 1, 1, 16 * GIB, 12 * GIB, 0}};
    CHECK(place(g, 2, "", 4, 4 * GIB) == 1,
          "a GPU with too little free memory is skipped, though it runs fewer jobs");
    CHECK(place(g, 2, "", 4, 12 * GIB) == NLLMD_PLACE_WAIT,
          "free memory must cover the need and the headroom: wait");
    CHECK(place(g, 2, "", 4, 12 * GIB - NLLMD_GPU_HEADROOM) == 1, "exactly enough: placed");
    CHECK(place(g, 2, "cuda:0", 4, 4 * GIB) == NLLMD_PLACE_WAIT,
          "a named GPU without the memory now: wait");
    char why[512] = "";
    int r = nllmd_place(g, 2, "", 4, 20 * GIB, why, sizeof why);
    CHECK(r == NLLMD_PLACE_NEVER, "bigger than every GPU: never (%d)", r);
    CHECK(strstr(why, "cuda:0") && strstr(why, "16384.0 MiB") && strstr(why, "batch_size"),
          "the message names the largest GPU, its size and what to lower: %s", why);
    nllmd_place_dev_t mix[2] = {{"cuda:0", 1, 0, 16 * GIB, 16 * GIB, 0}, {"cpu", 0, 2, 0, 0, 0}};
    CHECK(place(mix, 2, "", 2, 20 * GIB) == NLLMD_PLACE_WAIT,
          "too big for the GPU but a cpu may take it later: wait");
    CHECK(place(mix, 2, "cuda:0", 2, 20 * GIB) == NLLMD_PLACE_NEVER,
          "too big for the GPU it names: never");
    nllmd_place_dev_t unk[1] = {{"cuda:0", 1, 0, 0, 0, 0}};
    CHECK(place(unk, 1, "", 1, 20 * GIB) == 0, "a GPU whose memory is not known is not checked");
}

static void test_no_match(void)
{
    nllmd_place_dev_t cpu[1] = {{"cpu", 0, 0, 0, 0, 0}};
    CHECK(place(cpu, 1, "cuda", 1, 1) == NLLMD_PLACE_WAIT,
          "no GPU at all for \"cuda\": wait, as before (a restart with GPUs runs it)");
    CHECK(place(cpu, 1, "cuda:3", 1, 1) == NLLMD_PLACE_WAIT, "an unknown device name: wait");
}

/* A device that lacks the job's precision (the cpu for a bf16 job) is not
 * one of its devices: it goes elsewhere, or waits. */
static void test_excluded(void)
{
    nllmd_place_dev_t d[2] = {{"cpu", 0, 0, 0, 0, 1}, {"cuda:0", 1, 1, 80 * GIB, 70 * GIB, 0}};
    CHECK(place(d, 2, "", 2, 1 * GIB) == 1, "an excluded idle cpu was picked over the GPU");
    d[1].jobs = 2;
    CHECK(place(d, 2, "", 2, 1 * GIB) == NLLMD_PLACE_WAIT, "a full GPU: wait, not the cpu");
    CHECK(place(d, 2, "cpu", 2, 1 * GIB) == NLLMD_PLACE_WAIT, "an excluded named device");
    CHECK(!nllmd_place_allowed(&d[0], ""), "excluded device allowed");
}

static int place_n(const nllmd_place_dev_t *d, int n, const char *want, int ranks, int per,
                   uint64_t need, int *out)
{
    char why[512] = "";
    for (int r = 0; r < ranks; r++)
        out[r] = -9;
    return nllmd_place_ranks(d, n, want, ranks, per, need, out, why, sizeof why);
}

static void test_ranks_on_gpus(void)
{
    nllmd_place_dev_t g[4] = {{"cuda:0", 1, 1, 80 * GIB, 70 * GIB, 0},
                              {"cuda:1", 1, 0, 80 * GIB, 10 * GIB, 0},
                              {"cuda:2", 1, 0, 80 * GIB, 40 * GIB, 0},
                              {"cuda:3", 1, 0, 80 * GIB, 60 * GIB, 0}};
    int out[4];
    CHECK(place_n(g, 4, "", 1, 4, 1 * GIB, out) == 1 && out[0] == 3,
          "one rank: as nllmd_place (got %d)", out[0]);
    CHECK(place_n(g, 4, "cuda", 2, 4, 1 * GIB, out) == 2 && out[0] == 3 && out[1] == 2,
          "two ranks: the two idle GPUs with the most free memory, best first (%d %d)", out[0],
          out[1]);
    CHECK(place_n(g, 4, "", 4, 4, 1 * GIB, out) == 4 && out[0] == 3 && out[1] == 2 &&
              out[2] == 1 && out[3] == 0,
          "four ranks: every GPU, the busy one last (%d %d %d %d)", out[0], out[1], out[2],
          out[3]);
    CHECK(place_n(g, 4, "", 4, 1, 1 * GIB, out) == NLLMD_PLACE_WAIT,
          "four ranks with one GPU full: all or none, so wait");
    CHECK(place_n(g, 4, "", 3, 4, 45 * GIB, out) == NLLMD_PLACE_WAIT,
          "three ranks that need 45 GiB each: two GPUs have it free now: wait");
    CHECK(place_n(g, 4, "", 2, 4, 45 * GIB, out) == 2 && out[0] == 3 && out[1] == 0,
          "two ranks that need 45 GiB: the two GPUs with that free, the idle one first (%d %d)",
          out[0], out[1]);
    char why[512] = "";
    int r = nllmd_place_ranks(g, 4, "", 2, 4, 100 * GIB, out, why, sizeof why);
    CHECK(r == NLLMD_PLACE_NEVER && strstr(why, "0 of the 4 GPUs") && strstr(why, "batch_size"),
          "ranks bigger than every GPU: never, with why (%d: %s)", r, why);
    nllmd_place_dev_t two[2] = {{"cuda:0", 1, 0, 80 * GIB, 80 * GIB, 0},
                                {"cuda:1", 1, 0, 16 * GIB, 16 * GIB, 0}};
    r = nllmd_place_ranks(two, 2, "cuda", 2, 4, 20 * GIB, out, why, sizeof why);
    CHECK(r == NLLMD_PLACE_NEVER && strstr(why, "1 of the 2 GPUs") && strstr(why, "cuda:1"),
          "one of two GPUs too small for a 2-rank job: never, naming it (%d: %s)", r, why);
    CHECK(place_n(two, 2, "cuda", 3, 4, 1 * GIB, out) == NLLMD_PLACE_WAIT,
          "more ranks than GPUs: wait (the start was refused)");
    two[1].excluded = 1;
    CHECK(place_n(two, 2, "cuda", 2, 4, 1 * GIB, out) == NLLMD_PLACE_WAIT,
          "a GPU out of service: wait for it, do not fail");
    r = nllmd_place_ranks(two, 2, "cuda:0", 2, 4, 1 * GIB, out, why, sizeof why);
    CHECK(r == NLLMD_PLACE_NEVER && strstr(why, "one GPU"),
          "two ranks on one named GPU: never (%s)", why);
}

static void test_ranks_on_cpu(void)
{
    nllmd_place_dev_t cpu[1] = {{"cpu", 0, 0, 0, 0, 0}};
    int out[3];
    CHECK(place_n(cpu, 1, "", 3, 1, 1 * GIB, out) == 3 && out[0] == 0 && out[1] == 0 &&
              out[2] == 0,
          "three ranks share the cpu in one slot");
    CHECK(place_n(cpu, 1, "cpu", 2, 1, 1 * GIB, out) == 2 && out[1] == 0, "device cpu");
    cpu[0].jobs = 1;
    CHECK(place_n(cpu, 1, "", 2, 1, 1 * GIB, out) == NLLMD_PLACE_WAIT, "its slot taken: wait");
    CHECK(place_n(cpu, 1, "", 2, 2, 1 * GIB, out) == 2, "a second slot free: runs");
    CHECK(place_n(cpu, 1, "cuda", 2, 2, 1 * GIB, out) == NLLMD_PLACE_WAIT,
          "any GPU, none here: wait");
    nllmd_place_dev_t mix[3] = {{"cpu", 0, 0, 0, 0, 0},
                                {"cuda:0", 1, 0, 80 * GIB, 70 * GIB, 0},
                                {"cuda:1", 1, 1, 80 * GIB, 70 * GIB, 0}};
    CHECK(place_n(mix, 3, "", 2, 2, 1 * GIB, out) == 2 && out[0] == 1 && out[1] == 2,
          "GPUs first when enough are free (%d %d)", out[0], out[1]);
    mix[2].jobs = 2;
    CHECK(place_n(mix, 3, "", 2, 2, 1 * GIB, out) == 2 && out[0] == 0 && out[1] == 0,
          "else the cpu (%d %d)", out[0], out[1]);
    CHECK(place_n(mix, 3, "cuda", 2, 2, 1 * GIB, out) == NLLMD_PLACE_WAIT,
          "any GPU: not the cpu, wait");
    char why[256];
    CHECK(nllmd_place_ranks(mix, 3, "", 2, 2, 200 * GIB, out, why, sizeof why) == 2 &&
              out[0] == 0,
          "GPUs too small, the cpu takes it");
}

static void test_ranks_listed(void)
{
    nllmd_place_dev_t g[3] = {{"cuda:0", 1, 0, 80 * GIB, 70 * GIB, 0},
                              {"cuda:1", 1, 0, 80 * GIB, 10 * GIB, 0},
                              {"cuda:2", 1, 1, 80 * GIB, 40 * GIB, 0}};
    int out[3];
    CHECK(place_n(g, 3, "cuda:2,cuda:0", 2, 2, 1 * GIB, out) == 2 && out[0] == 2 && out[1] == 0,
          "a list: rank r on its r-th device (%d %d)", out[0], out[1]);
    CHECK(place_n(g, 3, "cuda:1,cuda:0", 2, 2, 20 * GIB, out) == NLLMD_PLACE_WAIT,
          "a listed GPU without the memory free now: wait");
    CHECK(place_n(g, 3, "cuda:2,cuda:0", 2, 1, 1 * GIB, out) == NLLMD_PLACE_WAIT,
          "a listed GPU without a free slot: wait");
    CHECK(place_n(g, 3, "cuda:0,cuda:7", 2, 2, 1 * GIB, out) == NLLMD_PLACE_WAIT,
          "a listed GPU this daemon lacks: wait");
    g[1].mem_total = 4 * GIB;
    char why[512] = "";
    int r = nllmd_place_ranks(g, 3, "cuda:0,cuda:1", 2, 2, 8 * GIB, out, why, sizeof why);
    CHECK(r == NLLMD_PLACE_NEVER && strstr(why, "cuda:1"), "a listed GPU too small: never "
          "(%s)", why);
    CHECK(nllmd_place_wants("cuda:0,cuda:1", "cuda:1", 1) &&
              !nllmd_place_wants("cuda:0,cuda:1", "cuda:2", 1) &&
              !nllmd_place_wants("cuda:10,cuda:1", "cuda:0", 1) &&
              nllmd_place_wants("cuda", "cuda:5", 1) && !nllmd_place_wants("cuda", "cpu", 0) &&
              nllmd_place_wants("", "cpu", 0),
          "nllmd_place_wants");
    CHECK(nllmd_place_list_len("cuda:0,cuda:1,cuda:3") == 3 && nllmd_place_list_len("") == 1,
          "list length");
}

int main(void)
{
    RUN(test_cpu_slots);
    RUN(test_fewest_jobs_then_free_memory);
    RUN(test_memory);
    RUN(test_no_match);
    RUN(test_excluded);
    RUN(test_ranks_on_gpus);
    RUN(test_ranks_on_cpu);
    RUN(test_ranks_listed);
    return TEST_REPORT();
}
