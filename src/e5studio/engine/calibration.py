"""A few ordinary English texts, in E5's query/passage form, that the int8 runtime runs once in fp32 at load to
measure each dense layer's input range per channel (:mod:`e5studio.engine.int8_kernels`).

Written for this project; general topics, no evaluation data, so no benchmark is calibrated on itself.
"""

CALIBRATION_TEXTS = (
    "query: how long should you boil an egg for a soft yolk",
    "query: what causes the seasons on earth",
    "query: symptoms of iron deficiency in adults",
    "query: best way to learn a second language as an adult",
    "query: why do cats purr",
    "query: how does a bank calculate compound interest on savings",
    "query: difference between a virus and a bacterium",
    "query: when was the printing press invented",
    "passage: The river rises in the northern hills and flows south for about three hundred kilometres before "
    "it reaches the sea. Several small towns grew up along its banks, where mills once used the current.",
    "passage: To reset the device, hold the power button for ten seconds until the light blinks twice, then "
    "release it and wait for the startup sound. Your settings and saved files are kept.",
    "passage: Photosynthesis converts light energy into chemical energy. Plants take in carbon dioxide and "
    "water and, using sunlight, produce glucose and release oxygen as a by-product.",
    "passage: The committee approved the budget on Tuesday after a long debate about school funding, road "
    "repairs and a new public library planned for the east side of the city.",
    "passage: Patients who received the new treatment reported less pain after six weeks than those in the "
    "control group, although the difference was small and the trial included only 120 people.",
    "passage: In 1969 the first crewed landing on the Moon took place. Two astronauts spent about two and a "
    "half hours outside the lunar module, collecting samples and setting up experiments.",
    "passage: Preheat the oven to 180 degrees. Mix the flour, sugar and butter, add two eggs, and bake for 35 "
    "minutes or until a knife inserted in the centre comes out clean.",
    "passage: The company's quarterly revenue rose 8% to $4.2 billion, driven by strong demand for cloud "
    "services, while operating costs grew more slowly than expected.",
)
